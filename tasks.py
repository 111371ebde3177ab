"""gpumod's task namespace (`inv --list`). The collections live in gpumod_tasks/tasks/."""

from gpumod_tasks.tasks import namespace

ns = namespace()
