"""The external resource framework (Flink FLIP-108 style)."""
