"""Example Stratus plugins, explained in docs/plugins.md and tested in tests/plugins/.

- `dice.Dice`: a CL4 command with a schema (`roll`).
- `filter.Cooldown`: a before_command filter that vetoes gmsg/gvar floods with E:120 | Cooldown
  and masks blocked words.
- `validator.ScoreValidator`: clamps Scratch `☁ score*` writes and refuses negative ones.
"""
