"""The pieces of the training engine; the loop itself is ``dens.train.train`` (module notes there).

- settings: the experiment's settings, typed and checked once (``TrainSettings.from_experiment``)
"""
