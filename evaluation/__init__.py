"""Offline evaluation of samplers on the task suites (`unmaskd eval`): an application over the
engine; the trainers and the CLI use it, the library never does."""
