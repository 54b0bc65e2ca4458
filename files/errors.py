"""WeightsError: the one exception of every weight loader."""


class WeightsError(Exception):
    """A weight file that cannot be loaded as asked: the message names the file and the problem."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
