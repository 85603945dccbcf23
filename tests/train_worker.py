"""Subprocess entry for distribution and kill/resume tests: trains and prints the losses.

Run as `python -m tests.train_worker <config.json> [stop_after]`; the config JSON is a
TrainConfig. Prints one JSON line {"losses": [[step, loss], ...], "replicas": n}.
"""

import json
import sys

from atn_tf.config import TrainConfig


def main():
    config = TrainConfig.load(sys.argv[1])
    from atn_tf.training import distribute, train_lib

    result = train_lib.train(config, progress=False)
    strategy = distribute.make_strategy(config.strategy, config.cpu_devices)
    print(json.dumps({"losses": result.losses, "replicas": strategy.num_replicas_in_sync,
                      "final_step": result.final_step}), flush=True)


if __name__ == "__main__":
    main()
