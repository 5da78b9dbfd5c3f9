"""Tasks: the built-in arithmetic generator and loaders for math and conversation datasets."""
from tasks.arithmetic import arithmetic_rows, worked_solution
from tasks.loaders import DataError, load_conversations, load_math, stream_rows

__all__ = ["arithmetic_rows", "worked_solution", "DataError", "load_conversations", "load_math", "stream_rows"]
