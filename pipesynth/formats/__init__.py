"""Files in and out: the `pipesynth.schedule/1` JSON format and torch.distributed.pipelining's CSV."""
