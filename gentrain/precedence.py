"""What the command line says wins, also for settings that go by two names.

Hydra merges key by key: the command line beats a recipe's value of the *same* key, but not
a value the recipe gives the same setting under *another* name. Two kinds of settings have
two names, and this module settles them in the composed config, before any task runs:

- A length counted in optimizer steps or in epochs (:data:`PAIRS`): ``trainer.max_steps`` /
  ``trainer.max_epochs`` and the schedule's ``warmup_steps`` / ``warmup_epochs`` and
  ``decay_start`` / ``decay_start_epoch``. The name set on the command line applies and the
  config files' value of the other is dropped (set to null); both names set on the command
  line is an error. Without either on the command line, an epochs key set in the config files
  replaces its steps key (a recipe's ``max_epochs: 50`` beats the trainer's default
  ``max_steps``).
- The network: a ``model/net=NAME`` choice on the command line gives ``model.net`` that
  option's values, whatever sizes a recipe set there (Hydra cannot let the choice beat a
  recipe merged after it); ``model.net.*`` keys on the command line apply on top.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra import compose
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, OmegaConf

from gentrain.engine.schedule import EPOCH_KEYS
from gentrain.errors import GentrainError

log = logging.getLogger(__name__)

COMMAND_LINE = "the command line"
CONFIG_FILES = "the config files"
NET_GROUP = "model/net"


@dataclass(frozen=True)
class Pair:
    """One setting under two names: counted in optimizer steps, and in epochs."""

    steps: str
    epochs: str


TRAINING = Pair("trainer.max_steps", "trainer.max_epochs")
PAIRS = (TRAINING, *(Pair(f"model.schedule.{steps}", f"model.schedule.{epochs}")
                     for epochs, steps in EPOCH_KEYS.items()))


@dataclass(frozen=True)
class Decision:
    """Which name of a setting applies (``key``, with ``value``), where that came from
    (:data:`COMMAND_LINE` or :data:`CONFIG_FILES`), and the config files' values it dropped."""

    key: str | None  # None: neither name is set
    value: Any
    source: str
    dropped: dict[str, Any] = field(default_factory=dict)

    def reason(self) -> str:
        """E.g. ``trainer.max_steps=188 from the command line; the config files'
        trainer.max_epochs=50 dropped``."""
        setting = f"{self.key}={self.value} from {self.source}"
        dropped = ", ".join(f"{key}={value}" for key, value in self.dropped.items())
        if not dropped:
            return setting
        if self.source == COMMAND_LINE:
            return f"{setting}; the config files' {dropped} dropped"
        return f"{setting}, which replaces their {dropped}"

    def record(self) -> dict[str, Any]:
        """For summary.json."""
        return {"set_by": self.key, "source": self.source, "dropped": self.dropped}


def settle(cfg: DictConfig, overrides: Sequence[str]) -> Decision:
    """Settle every two-named setting of ``cfg`` (in place) by the command line's
    ``overrides``; log what the command line dropped; return the training length's decision
    (the trainer logs it with the number of steps it comes to)."""
    given = {o.key_or_group: o for o in OverridesParser.create().parse_overrides(list(overrides))
             if not o.is_delete()}
    decisions = {pair: _settle_pair(cfg, pair, given) for pair in PAIRS}
    if NET_GROUP in given:
        decisions[NET_GROUP] = _settle_net(cfg, str(given[NET_GROUP].value()), given)
    for name, decision in decisions.items():
        if name != TRAINING and decision.source == COMMAND_LINE and decision.dropped:
            log.info("%s.", decision.reason())
    return decisions[TRAINING]


def _settle_pair(cfg: DictConfig, pair: Pair, given: dict[str, Override]) -> Decision:
    values = {key: OmegaConf.select(cfg, key) for key in (pair.steps, pair.epochs)}
    on_command_line = [key for key, value in values.items() if key in given and value is not None]
    if len(on_command_line) == 2:
        raise GentrainError(
            f"{pair.steps}={values[pair.steps]} and {pair.epochs}={values[pair.epochs]} are both "
            "on the command line, but they are one setting, counted in optimizer steps and in "
            "epochs. Give one of them."
        )
    if on_command_line:
        key, source = on_command_line[0], COMMAND_LINE
    else:
        key = pair.epochs if values[pair.epochs] is not None else pair.steps
        source = CONFIG_FILES
    other = pair.steps if key == pair.epochs else pair.epochs
    dropped = {}
    if values[other] is not None:
        dropped[other] = values[other]
        OmegaConf.update(cfg, other, None)
    return Decision(key if values[key] is not None else None, values[key], source, dropped)


def _settle_net(cfg: DictConfig, choice: str, given: dict[str, Override]) -> Decision:
    """``model.net`` as the option ``choice`` defines it, with the command line's
    ``model.net.*`` keys on top."""
    net = _net_option(choice)
    for key in given:
        if key.startswith("model.net."):
            OmegaConf.update(net, key.removeprefix("model.net."), OmegaConf.select(cfg, key),
                             force_add=True)
    composed = OmegaConf.to_container(cfg.model.net, resolve=True)
    wanted = OmegaConf.to_container(net, resolve=True)
    dropped = {f"model.net.{key}": value for key, value in composed.items()  # type: ignore[union-attr]
               if key not in wanted or wanted[key] != value}  # type: ignore[operator,index]
    cfg.model.net = net
    return Decision(NET_GROUP, choice, COMMAND_LINE, dropped)


def _net_option(choice: str) -> DictConfig:
    """The ``model/net`` option ``choice`` as Hydra finds it (the running app's search path)."""
    if not GlobalHydra.instance().is_initialized():
        problem = "Hydra's config search path is not set up (gentrain runs outside Hydra)"
    else:
        try:
            return compose(config_name=f"{NET_GROUP}/{choice}").model.net
        except MissingConfigException:
            problem = f"the option is not in gentrain's config search path ({NET_GROUP}/)"
    raise GentrainError(
        f"{NET_GROUP}={choice} on the command line cannot be applied over the recipe's network "
        f"sizes: {problem}. Give the sizes as model.net.* keys instead (e.g. "
        "model.net.base_channels=32 model.net.channel_mult=[1,2,2] model.net.num_res_blocks=1)."
    )
