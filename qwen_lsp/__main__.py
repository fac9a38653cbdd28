import os
import sys

# `python -m qwen_lsp` puts the working directory on sys.path (first, and
# again for an empty PYTHONPATH entry). Editors start the server in the
# project's folder, and a project with its own argparse.py, json.py or
# asyncio/ would then replace the standard library's modules in the server
# and crash it. Our own package is already imported.
_here = os.getcwd()
sys.path[:] = [p for p in sys.path if p not in ("", ".", _here)]

from qwen_lsp.cli import main

raise SystemExit(main())
