"""Helper library of the course "Souveräne LLMs".

Notebooks, the course runner, the tests and Kubernetes jobs all call the same functions here, either
directly or through ``python -m helpers <step>``. Heavy libraries (torch, vLLM, transformers) are imported
inside the functions that need them, so ``import helpers`` stays fast.
"""

__version__ = "0.1.0"
