"""`jowa bench`: throughput of the data path, training and planning, each against a baseline measured in the
same run."""
