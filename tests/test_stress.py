"""`make stress` (tools/stress.py): what it reports of a failed round."""
from tools import stress

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_stops" name="test_a_second_ctrl_c_stops_at_once" time="2"/>
<testcase classname="tests.test_stops"
  name="test_prepare_stopped_at_random_moments_ends_with_the_uninterrupted_dataset" time="30">
<failure message="AssertionError: (77, {'seed': 77, 'failures': ['chaos.2.log: a traceback']})">
trace</failure></testcase></testsuite></testsuites>"""


def test_a_failure_is_reported_with_its_test_id_and_seed(tmp_path):
  junit = tmp_path / 'round1.xml'
  junit.write_text(JUNIT)
  cases, failed = stress.failures_of(junit)
  assert cases == 2 and len(failed) == 1
  test = ('tests/test_stops.py::'
          'test_prepare_stopped_at_random_moments_ends_with_the_uninterrupted_dataset')
  assert failed[0]['test'] == test and 'a traceback' in failed[0]['message']
  assert failed[0]['replay'] == (f"python -m pytest -p no:cacheprovider '{test}'; or: "
                                 'python -m tools.chaos_prepare --seed 77')
  assert stress.failures_of(tmp_path / 'missing.xml')[1][0]['message'] == \
      'pytest wrote no report'
