"""mdf-search: distributed ablation search over the MDF-MLLM fundus classifier."""

__version__ = "0.1.0"
