"""ECS deployment: the task-definition template and the script that rolls an image out."""
