"""The pieces of the training engine; the loop itself is ``dens.train.train`` (module notes there).

- settings: the experiment's settings, typed and checked once (``TrainSettings.from_experiment``)
- schedule: the length of a run, the data order and the learning rate of every step
- optimizer: AdamW's weight-decay groups and the EMA update
- labels: the label normaliser of a run
- losses: the loss of a batch, with or without its DeNS draw
- trainee: what a run optimises (model, EMA, AdamW, generators) and one optimiser step
- state: where a run stands (``Progress``), what it works with (``TrainingRun``), checkpoints
- epoch: one epoch's steps, its validation and its log.csv row
- log: log.csv and the console lines
- stop: stopping on SIGTERM or at a time, last.pt saved
"""
