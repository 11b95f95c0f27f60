"""A Scratch cloud-variable validator: scores are clamped, negative scores refused.

config.toml:

    [[plugins]]
    use = "plugins.examples.validator:ScoreValidator"
    rooms = ["*"]        # optional: which projects (globs) it applies to
    maximum = 1000000    # optional, default 1000000
"""

from __future__ import annotations

from plugins.api import DROP, Plugin, VariableWrite, on_variable, printable


class ScoreValidator(Plugin):
    """`☁ score*` writes: non-numbers and negatives are refused, big values clamped."""

    name = "score-validator"

    def __init__(self, host, settings=None):
        super().__init__(host, settings)
        self.maximum = self.settings.get("maximum", 1_000_000)

    @on_variable("☁ score*")
    def check_score(self, write: VariableWrite):
        try:
            score = float(write.value)  # Scratch sends numbers or numeric strings
        except (TypeError, ValueError):
            return DROP
        if score < 0:
            self.log.info("refused %s = %s in %s", printable(write.name),
                          printable(write.value), printable(write.room))
            return DROP  # not stored, not relayed
        if score > self.maximum:
            return self.maximum  # stored and relayed instead of the written value
        return None  # keep the value as written
