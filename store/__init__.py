"""What the API and the worker share: the task store, the blob store and the settings."""
