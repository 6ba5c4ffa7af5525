"""The heartvec job worker (`heartvec worker`): a Celery worker running `heartvec.jobs.run_job`,
one process per GPU, one job at a time."""
