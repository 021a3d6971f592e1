"""The README and docs as a reader follows them: every relative link and anchor leads somewhere."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / 'README.md', ROOT / 'CHANGELOG.md', *sorted((ROOT / 'docs').glob('*.md'))]


def anchors(page: pathlib.Path) -> set[str]:
  """GitHub's anchors for the headings of `page`."""
  headings = re.findall(r'(?m)^#+ (.*)$', re.sub(r'(?s)```.*?```', '', page.read_text()))
  return {re.sub(r'[^a-z0-9 -]', '', h.lower()).replace(' ', '-') for h in headings}


def broken_links(pages) -> list[str]:
  broken = []
  for page in pages:
    for target in re.findall(r'\]\(([^)\s]+)\)', page.read_text()):
      if re.match(r'[a-z]+:', target):  # https:, mailto:
        continue
      path, _, anchor = target.partition('#')
      linked = (page.parent / path) if path else page
      if not linked.exists():
        broken.append(f'{page.name}: {target} (no such file)')
      elif anchor and linked.suffix == '.md' and anchor not in anchors(linked):
        broken.append(f'{page.name}: {target} (no such heading)')
  return broken


def test_every_relative_link_and_anchor_resolves():
  assert len(PAGES) > 5
  assert broken_links(PAGES) == []


def test_the_check_finds_a_broken_link_and_anchor(tmp_path):
  (tmp_path / 'a.md').write_text('# A page\n\n[ok](#a-page) [gone](b.md) [bad](#nowhere)\n')
  assert broken_links([tmp_path / 'a.md']) == ['a.md: b.md (no such file)',
                                               'a.md: #nowhere (no such heading)']
