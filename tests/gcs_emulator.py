"""A local Cloud Storage emulator for tests: gcp-storage-emulator, serving one in-memory bucket.

  python tests/gcs_emulator.py PORT BUCKET

Listens on 127.0.0.1 only. One gap of the emulator is filled here: object downloads carry no
`x-goog-generation` header, which tensorstore (orbax's array storage) needs to read an object
back ("Malformed StorageGeneration" otherwise).
"""
import sys

from gcp_storage_emulator.handlers import objects


def _with_generation(download):
  def handler(request, response, storage, *args, **kwargs):
    download(request, response, storage, *args, **kwargs)
    try:
      obj = storage.get_file_obj(request.params['bucket_name'], request.params['object_id'])
    except Exception:  # not found: the response already says so
      return
    response['x-goog-generation'] = str(obj['generation'])
    response['x-goog-metageneration'] = str(obj['metageneration'])
  return handler


objects.download = _with_generation(objects.download)  # before the server builds its routes


def main(port: int, bucket: str) -> None:
  from gcp_storage_emulator.server import create_server
  server = create_server('127.0.0.1', port, in_memory=True, default_bucket=bucket)
  server.run()


if __name__ == '__main__':
  main(int(sys.argv[1]), sys.argv[2])
