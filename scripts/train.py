"""Train one model x loss x dataset combination (a Hydra app; the logic is in aot/run.py).

python scripts/train.py                                   # tiny x aot_unpaired x sample, CPU
python scripts/train.py model=merlinite loss=aot_unpaired data=ultrafeedback
python scripts/train.py --cfg job model=llama3 loss=dpo   # print the resolved config only
"""

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from aot.config import with_default_output_dir
from aot.distributed import shut_down
from aot.run import train


@hydra.main(config_path="../recipes", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("aot").setLevel(logging.INFO)
    train(with_default_output_dir(cfg, HydraConfig.get().overrides.task))
    shut_down()


if __name__ == "__main__":
    main()
