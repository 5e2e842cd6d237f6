"""Train one model x loss x dataset combination (a Hydra app; the logic is in aot/run.py).

python scripts/train.py                                   # tiny x aot_unpaired x sample, CPU
python scripts/train.py model=merlinite loss=aot_unpaired data=ultrafeedback
python scripts/train.py --cfg job model=llama3 loss=dpo   # print the resolved config only
"""

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from aot.config import check_config, with_default_output_dir


@hydra.main(config_path="../recipes", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("aot").setLevel(logging.INFO)
    cfg = with_default_output_dir(cfg, HydraConfig.get().overrides.task)
    check_config(cfg)  # a bad setting is answered here, before the ML stack loads
    # torch, transformers, peft, datasets and accelerate load from here on only: `--cfg job`, an
    # unknown name or key and a bad setting never pay for them (tests/unit/test_startup.py).
    from aot.distributed import shut_down
    from aot.run import train

    train(cfg)
    shut_down()


if __name__ == "__main__":
    main()
