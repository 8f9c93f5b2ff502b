"""Tasks: what differs between model families (classify, gan, vae), one module each.

The registry points every model kind at its task (registry.MODELS[kind].task); the shared mechanics (the training
loop, `evaluate`, export, pruning, serving) call the task through the interface of tasks/base.py and never branch on
a task's name. Adding a task is a new module here plus registry lines."""
