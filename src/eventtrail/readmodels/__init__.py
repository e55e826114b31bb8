"""Read models: projections of the event log (per-minute service rollups with
latency sketches, one summary per request), kept as events are stored and
rebuilt by replaying them. See ``docs/read-models.md``."""

from eventtrail.readmodels.model import PROJECTION_VERSION, RequestQuery, RequestSummary
from eventtrail.readmodels.port import ReadModels, ReadModelsOutdated, RequestPage, read_models_of
from eventtrail.readmodels.sketch import LatencySketch

__all__ = [
    "PROJECTION_VERSION",
    "LatencySketch",
    "ReadModels",
    "ReadModelsOutdated",
    "RequestPage",
    "RequestQuery",
    "RequestSummary",
    "read_models_of",
]
