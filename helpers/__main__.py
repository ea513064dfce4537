import sys

from .cli import main

if __name__ == "__main__":   # a spawned vLLM engine process re-imports this module
    sys.exit(main())
