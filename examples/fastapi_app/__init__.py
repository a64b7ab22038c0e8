"""A FastAPI web API that imports book listings and queues their primary photo."""
