"""The evaluation layer: reports, MTL gains, single-task and GBDT yardsticks, confirmation, export."""
