"""Training: one resumable loop (``loop.fit``), its settings and learning-rate schedules, the cost meter,
checkpoints, and the data helpers it shares with the zoo and the defense recipes.

Below ``builtin`` (the zoo trains its models here) and ``defenses`` (each recipe supplies a loss, the
parameters to train and the networks whose passes count).
"""
