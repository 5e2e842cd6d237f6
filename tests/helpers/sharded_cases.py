"""Several training runs in one `accelerate launch` (one process group, one start-up).

    accelerate launch --config_file configs/accelerate/fsdp_cpu.yaml tests/helpers/sharded_cases.py CASE [CASE ...]

Each CASE is a JSON list of recipe overrides, run with ``aot.run.train`` in order; each run
writes its outputs (metrics.json with the ``distributed`` block, weights) to its output_dir.
"""

import json
import logging
import sys

from aot.config import compose
from aot.distributed import shut_down
from aot.run import train

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for case in sys.argv[1:]:
        train(compose(*json.loads(case)))
    shut_down()
