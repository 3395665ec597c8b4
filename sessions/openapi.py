"""The OpenAPI 3 document of the JSON API, served at /api/openapi.json and rendered
for people at /api/docs. Written by hand: the API is small and its shapes are
stable, so a dict is simpler than a schema generator. Keep it in step with api.py
(tests/test_api_openapi.py checks every route is here, and the fuzz run against
the live app checks the answers match).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from sessions import catalog
from sessions.models import STANDARD_METRICS, TrainingSession


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }


def _errors(*codes: int) -> dict[str, Any]:
    meaning = {
        400: "Bad input; `fields` names each offending field",
        401: "No credentials, or an invalid or revoked token",
        403: "Cookie login without a valid CSRF token",
        404: "Unknown id, or a session of another user",
        405: "Method not allowed",
        409: "Not possible in the session's state (e.g. it has finished)",
        413: "Request body or batch too large",
        503: "The database is busy; retry after the Retry-After seconds",
    }
    return {str(code): _json(_ref("Error"), meaning[code]) for code in codes}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


SESSION_ID = {
    "name": "session_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": 2**62 - 1},
    "description": "The training session's id",
}

RUN_ANSWER = {
    "type": "object",
    "required": ["session", "stopRequested"],
    "properties": {
        "session": _ref("Session"),
        "stopRequested": {
            "type": "boolean",
            "description": "True when someone pressed Stop: end the loop and call "
            "finish; the run then ends as `stopped`.",
        },
    },
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "fields"],
        "properties": {
            "error": {"type": "string", "description": "What went wrong"},
            "fields": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "Message per offending field, e.g. "
                '"epochs[3].metrics.val_loss"',
            },
        },
    },
    "Session": {
        "type": "object",
        "required": ["id", "modelType", "dataset", "status", "currentEpoch"],
        "properties": {
            "id": {"type": "integer"},
            "name": {"type": "string"},
            "owner": {"type": "integer"},
            "modelType": {
                "type": "string",
                "description": "A catalog model type, or `external` for a run "
                "logged by a script",
            },
            "dataset": {"type": "string"},
            "status": {"type": "string", "enum": list(TrainingSession.Status.values)},
            "currentEpoch": {"type": "integer"},
            "totalEpochs": {"type": ["integer", "null"]},
            "progress": {"type": "number", "minimum": 0, "maximum": 100},
            "createdAt": {"type": "string", "format": "date-time"},
            "startedAt": {"type": ["string", "null"], "format": "date-time"},
            "finishedAt": {"type": ["string", "null"], "format": "date-time"},
            "heartbeatAt": {"type": ["string", "null"], "format": "date-time"},
            "durationSeconds": {"type": ["number", "null"]},
            "params": {"type": "object"},
            "finalMetrics": {"type": "object"},
            "bestValAccuracy": {"type": ["number", "null"]},
            "report": {"type": "object"},
            "diagnostics": {"type": "array"},
            "error": {"type": "string"},
            "url": {"type": "string", "description": "The session's page"},
        },
    },
    "Metrics": {
        "type": "object",
        "description": "Metric name -> value. Standard names: "
        + ", ".join(STANDARD_METRICS)
        + "; any other name is kept too.",
        "additionalProperties": {"type": ["number", "null"]},
    },
    "Epoch": {
        "type": "object",
        "required": ["epoch", "metrics"],
        "properties": {
            "epoch": {"type": "integer"},
            "metrics": _ref("Metrics"),
            "duration": {"type": ["number", "null"]},
            "time": {"type": ["string", "null"], "format": "date-time"},
        },
    },
    "Event": {
        "type": "object",
        "required": ["id", "type", "session"],
        "description": "The same object the WebSocket sends, with its cursor id.",
        "properties": {
            "id": {"type": "integer", "description": "Cursor of this event"},
            "time": {"type": "string", "format": "date-time"},
            "type": {
                "type": "string",
                "enum": [
                    "training_started",
                    "training_progress",
                    "training_completed",
                    "training_failed",
                    "training_stopped",
                    "training_status",
                ],
            },
            "session": _ref("Session"),
            "epoch": {"type": "integer"},
            "metrics": _ref("Metrics"),
            "stats": {"type": "object"},
            "coalesced": {
                "type": "object",
                "description": "On a progress event standing for a large logged "
                "batch: count, firstEpoch, lastEpoch",
            },
        },
    },
    "LoggedEpoch": {
        "type": "object",
        "required": ["epoch", "metrics"],
        "properties": {
            "epoch": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
            "metrics": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 200,
                "propertyNames": {
                    "minLength": 1,
                    "maxLength": 100,
                    "pattern": "^[^\\u0000]+$",
                },
                "additionalProperties": {"type": "number"},
                "description": "Finite numbers only: NaN, infinity and strings are "
                "refused with 400 naming the epoch and metric",
            },
            "duration": {"type": ["number", "null"], "minimum": 0},
        },
    },
}

AUTH_ERRORS = (401, 403, 405, 503)


def _paths() -> dict[str, Any]:
    model_types = [*catalog.MODEL_TYPES, catalog.EXTERNAL_MODEL_TYPE]
    return {
        "/api/ml/models": {
            "get": {
                "summary": "Model types, data sets and each type's latest status",
                "description": "Every model type with its parameters (name, kind, "
                "default, bounds, choices), the data sets, and per model type the "
                "status of this user's latest session (`untrained` if none).",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["modelTypes", "datasets", "commonParams"],
                            "properties": {
                                "modelTypes": {"type": "array"},
                                "datasets": {"type": "array"},
                                "commonParams": {"type": "array"},
                            },
                        },
                        "The catalog",
                    ),
                    **_errors(*AUTH_ERRORS),
                },
            }
        },
        "/api/ml/training-data": {
            "get": {
                "summary": "Active sessions and the history, paginated and filtered",
                "parameters": [
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 500},
                        "History page size (default 50)",
                    ),
                    _query(
                        "offset",
                        {"type": "integer", "minimum": 0},
                        "History rows to skip",
                    ),
                    _query(
                        "status",
                        {"type": "string", "enum": list(TrainingSession.Status.values)},
                        "Only sessions with this status",
                    ),
                    _query(
                        "modelType",
                        {"type": "string", "enum": model_types},
                        "Only this model type",
                    ),
                    _query(
                        "dataset",
                        {"type": "string", "maxLength": 32},
                        "Only this data set",
                    ),
                    _query(
                        "q",
                        {"type": "string", "maxLength": 200},
                        "Search: id, name, model type or data set",
                    ),
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["active", "history", "total", "cursor"],
                            "properties": {
                                "active": {"type": "array", "items": _ref("Session")},
                                "history": {
                                    "type": "array",
                                    "items": _ref("Session"),
                                },
                                "total": {"type": "integer"},
                                "limit": {"type": "integer"},
                                "offset": {"type": "integer"},
                                "hasMore": {"type": "boolean"},
                                "cursor": {
                                    "type": "integer",
                                    "description": "Poll real-time-updates from here "
                                    "to follow what changes after this answer",
                                },
                            },
                        },
                        "Sessions",
                    ),
                    **_errors(400, *AUTH_ERRORS),
                },
            }
        },
        "/api/ml/training-session/{session_id}": {
            "get": {
                "summary": "One session",
                "parameters": [SESSION_ID],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["session"],
                            "properties": {"session": _ref("Session")},
                        },
                        "The session",
                    ),
                    **_errors(404, *AUTH_ERRORS),
                },
            }
        },
        "/api/ml/training-metrics/{session_id}": {
            "get": {
                "summary": "A session's epochs in order",
                "parameters": [
                    SESSION_ID,
                    _query(
                        "after",
                        {"type": "integer", "minimum": 0},
                        "Only epochs after this one",
                    ),
                    _query(
                        "maxPoints",
                        {"type": "integer", "minimum": 2},
                        "Downsample to about this many points",
                    ),
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["sessionId", "status", "epochs"],
                            "properties": {
                                "sessionId": {"type": "integer"},
                                "status": {"type": "string"},
                                "epochs": {"type": "array", "items": _ref("Epoch")},
                            },
                        },
                        "Epochs",
                    ),
                    **_errors(400, 404, *AUTH_ERRORS),
                },
            }
        },
        "/api/ml/real-time-updates": {
            "get": {
                "summary": "Events after a cursor, for clients without a WebSocket",
                "description": "Start from `cursor` of training-data (or 0), then "
                "call again with the `cursor` of each answer: no event is skipped "
                "or repeated. `missed` is true when events after `since` were "
                "pruned (kept 7 days): reload training-data.",
                "parameters": [
                    _query(
                        "since",
                        {"type": "integer", "minimum": 0},
                        "The cursor of the previous answer (default 0)",
                    ),
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 1000},
                        "Events per answer (default 500)",
                    ),
                    _query(
                        "session",
                        {"type": "integer", "minimum": 1},
                        "Only this session's events",
                    ),
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["events", "cursor", "hasMore", "missed"],
                            "properties": {
                                "events": {"type": "array", "items": _ref("Event")},
                                "cursor": {"type": "integer"},
                                "hasMore": {"type": "boolean"},
                                "missed": {"type": "boolean"},
                            },
                        },
                        "Events in order",
                    ),
                    **_errors(400, *AUTH_ERRORS),
                },
            }
        },
        "/api/ml/start-training": {
            "post": {
                "summary": "Queue a training session",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["modelType"],
                                "properties": {
                                    "modelType": {
                                        "type": "string",
                                        "enum": list(catalog.MODEL_TYPES),
                                    },
                                    "dataset": {
                                        "type": "string",
                                        "enum": list(catalog.DATASETS),
                                    },
                                    "epochs": {
                                        "type": "integer",
                                        "minimum": 1,
                                        "maximum": settings.MLTRACK_MAX_EPOCHS,
                                    },
                                    "params": {
                                        "type": "object",
                                        "description": "See GET /api/ml/models",
                                    },
                                },
                            },
                            "example": {
                                "modelType": "randomforest",
                                "dataset": "digits",
                                "epochs": 20,
                            },
                        }
                    },
                },
                "responses": {
                    "201": _json(
                        {
                            "type": "object",
                            "required": ["session"],
                            "properties": {"session": _ref("Session")},
                        },
                        "Queued",
                    ),
                    **_errors(400, 413, *AUTH_ERRORS),
                },
            }
        },
        "/api/ml/stop-training/{session_id}": {
            "post": {
                "summary": "Stop a session (a queued one at once, a running one at "
                "the end of its epoch)",
                "parameters": [SESSION_ID],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["session"],
                            "properties": {"session": _ref("Session")},
                        },
                        "Stopped or stopping",
                    ),
                    **_errors(404, 409, *AUTH_ERRORS),
                },
            }
        },
        "/api/ml/runs": {
            "post": {
                "summary": "Start logging a run whose training loop runs elsewhere",
                "description": "The run appears on the Models page at once as model "
                "type `external`, status running.",
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "name": {
                                        "type": ["string", "null"],
                                        "maxLength": 200,
                                    },
                                    "dataset": {
                                        "type": ["string", "null"],
                                        "maxLength": 32,
                                        "description": "A label (default `custom`)",
                                    },
                                    "params": {"type": ["object", "null"]},
                                    "totalEpochs": {
                                        "type": ["integer", "null"],
                                        "minimum": 1,
                                        "maximum": settings.MLTRACK_MAX_EPOCHS,
                                    },
                                },
                            },
                            "example": {
                                "name": "resnet-lr3e-4",
                                "params": {"lr": 0.0003},
                                "totalEpochs": 50,
                            },
                        }
                    },
                },
                "responses": {
                    "201": _json(RUN_ANSWER, "The run"),
                    **_errors(400, 413, *AUTH_ERRORS),
                },
            }
        },
        "/api/ml/runs/{session_id}/metrics": {
            "post": {
                "summary": "Log a batch of epochs (one to 10,000)",
                "description": "An epoch already stored (a retry) is kept once; the "
                "chart orders by epoch, not arrival. Up to 50 new epochs are "
                "announced one event each; a larger batch as one training_progress "
                "event for its last epoch, with `coalesced`.",
                "parameters": [SESSION_ID],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["epochs"],
                                "properties": {
                                    "epochs": {
                                        "type": "array",
                                        "minItems": 1,
                                        "items": _ref("LoggedEpoch"),
                                        "description": "At most 10,000 per request "
                                        "(more: 413)",
                                    }
                                },
                            },
                            "example": {
                                "epochs": [
                                    {
                                        "epoch": 1,
                                        "metrics": {"train_loss": 0.9, "my_metric": 3},
                                    }
                                ]
                            },
                        }
                    },
                },
                "responses": {
                    "200": _json(
                        {
                            **RUN_ANSWER,
                            "properties": {
                                **RUN_ANSWER["properties"],
                                "received": {"type": "integer"},
                                "stored": {"type": "integer"},
                                "duplicates": {"type": "integer"},
                            },
                        },
                        "Stored",
                    ),
                    **_errors(400, 404, 409, 413, *AUTH_ERRORS),
                },
            }
        },
        "/api/ml/runs/{session_id}/finish": {
            "post": {
                "summary": "End a run",
                "description": "`completed` ends a run as stopped if Stop was "
                "requested. Repeating the same finish answers 200.",
                "parameters": [SESSION_ID],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["status"],
                                "properties": {
                                    "status": {
                                        "type": "string",
                                        "enum": ["completed", "failed"],
                                    },
                                    "error": {
                                        "type": ["string", "null"],
                                        "maxLength": 10_000,
                                    },
                                },
                            },
                            "example": {"status": "completed"},
                        }
                    },
                },
                "responses": {
                    "200": _json(RUN_ANSWER, "The finished run"),
                    **_errors(400, 404, 409, 413, *AUTH_ERRORS),
                },
            }
        },
        "/api/ml/runs/{session_id}/heartbeat": {
            "post": {
                "summary": "Say the script is alive (a run silent too long is "
                "marked failed)",
                "description": "A run failed as lost (no heartbeat or metrics for "
                "MLTRACK_HEARTBEAT_TIMEOUT seconds) goes back to running when its "
                "script calls heartbeat, metrics or finish again.",
                "parameters": [SESSION_ID],
                "responses": {
                    "200": _json(RUN_ANSWER, "The run"),
                    **_errors(404, 409, *AUTH_ERRORS),
                },
            }
        },
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mltrack API",
            "version": "1",
            "description": "Start, stop and watch training sessions, and log runs "
            "whose training loop runs elsewhere. Authenticate with "
            "`Authorization: Bearer <token>` (`manage.py create_api_token USERNAME`) "
            "or, from the site's pages, the session cookie plus X-CSRFToken. Every "
            "error is JSON `{error, fields}`.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"cookie": []}],
        "paths": _paths(),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "sessionid"},
            },
        },
    }
