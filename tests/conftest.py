import sys
from pathlib import Path

# The parity suite and examples live beside the package, at the repository root.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
