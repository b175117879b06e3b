"""The torch.distributed executor (installed as `pipesynth.runtime`)."""
