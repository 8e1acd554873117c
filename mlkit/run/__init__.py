"""Running a notebook: parameters, execution (papermill or warm kernels), the runner.

``params`` reads and checks a notebook's parameters cell; ``notebook`` executes through
papermill and proves success; ``warm`` keeps kernels with the heavy imports done;
``kernel_state`` resets a reused kernel; ``runner`` makes the record around an execution;
``lifetime`` ends a child process with its parent.
Nothing is imported here: a kernel imports ``mlkit.run.kernel_state`` alone.
"""
