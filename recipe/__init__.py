"""The R1 recipe's glue commands: chat, evaluation, sampling / rejection sampling, the pipeline."""
