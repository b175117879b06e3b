"""Planning a training job: the fastest schedule that fits a memory budget."""
