"""A local Cloud Storage emulator for tests: gcp-storage-emulator, serving one in-memory bucket.

  python tests/gcs_emulator.py PORT BUCKET

Listens on 127.0.0.1 only. Two gaps of the emulator are filled here: object downloads carry no
`x-goog-generation` header, which tensorstore (orbax's array storage) needs to read an object
back ("Malformed StorageGeneration" otherwise); and uploads ignore the `ifGenerationMatch=0`
precondition (create only if absent; 412 otherwise), on which the workdir lock relies.
"""
import sys
from http import HTTPStatus

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


def _create_only_if_asked(insert):
  def handler(request, response, storage, *args, **kwargs):
    if request.query.get('ifGenerationMatch') == ['0']:
      name = (request.query['name'][0] if 'name' in request.query
              else request.data['meta'].get('name'))
      try:
        storage.get_file_obj(request.params['bucket_name'], name)
      except Exception:  # absent: created below
        pass
      else:
        response.status = HTTPStatus.PRECONDITION_FAILED
        response.json({'error': {'code': 412, 'message': 'At least one of the pre-conditions '
                                 'you specified did not hold.',
                                 'errors': [{'reason': 'conditionNotMet'}]}})
        return
    return insert(request, response, storage, *args, **kwargs)
  return handler


# Before the server builds its routes.
objects.download = _with_generation(objects.download)
objects.insert = _create_only_if_asked(objects.insert)


def main(port: int, bucket: str) -> None:
  from gcp_storage_emulator.server import create_server
  server = create_server('127.0.0.1', port, in_memory=True, default_bucket=bucket)
  server.run()


if __name__ == '__main__':
  main(int(sys.argv[1]), sys.argv[2])
