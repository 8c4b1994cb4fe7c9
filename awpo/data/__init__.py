"""Tool-use tasks: the built-in generator and loaders for user data."""

from .builtin import DEFAULT_SIZES, builtin_tasks
from .hf_dataset import builtin_dataset, tasks_dataset
from .loaders import load_tasks, save_tasks
from .prompts import SYSTEM_PROMPT
from .stream import DataStream, load_eval_tasks, load_task_set, load_train_tasks
from .task import CATEGORIES, SINGLE_TURN_CATEGORIES, Task
from .tools import TOOLS

__all__ = ["CATEGORIES", "DEFAULT_SIZES", "DataStream", "SINGLE_TURN_CATEGORIES", "SYSTEM_PROMPT", "TOOLS", "Task",
           "builtin_dataset", "builtin_tasks", "load_eval_tasks", "load_task_set", "load_tasks", "load_train_tasks",
           "save_tasks", "tasks_dataset"]
