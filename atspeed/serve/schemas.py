"""Request and response bodies (pydantic models: FastAPI checks types and writes the OpenAPI docs).

Item ids are 0-based, as in `<name>.index.json`, `meta.json`'s `item_keys` and the Python API
(`atspeed.rec.recommend`); the `sequential_*.txt` files and the CLI's `--history` count from 1.
Types are strict: `"12"`, `12.0` and `true` are not items, `20.5` is not a K.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

HISTORY = "0-based item ids (as in index.json and meta.json's item_keys), oldest first; the last 20 are read"
USER = "the caller's user id, echoed back (optional)"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


class UserHistory(_Strict):
    user: StrictStr | StrictInt | None = Field(None, description=USER)
    history: list[StrictInt] = Field(description=HISTORY, examples=[[12, 7, 301]])

    @field_validator("user")
    @classmethod
    def _echoable(cls, user: str | int | None) -> str | int | None:
        """JSON's escapes can spell a lone surrogate, which no answer can echo back (UTF-8 has none)."""
        if isinstance(user, str):
            try:
                user.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("the user id is not valid Unicode text (it holds a lone surrogate)") from None
        return user


class RecommendRequest(UserHistory):
    k: StrictInt = Field(20, description="items to return (1 … min(max_k, catalogue size))")


class BatchRequest(_Strict):
    users: list[UserHistory] = Field(description="at most max_users users, each decoded with the same K")
    k: StrictInt = Field(20, description="items per user")


class Recommendation(BaseModel):
    user: str | int | None = None
    items: list[int] = Field(description="K item ids, 0-based, best first")
    keys: list[str | int] | None = Field(None, description="the items' original keys (datasets with meta.json keys)")
    scores: list[float] = Field(description="beam scores (log-probability / length), best first")


class RecommendResponse(Recommendation):
    method: str
    k: int
    latency_ms: float = Field(description="server-side time from the request's arrival to its answer")


class BatchResponse(BaseModel):
    results: list[Recommendation]
    method: str
    k: int
    latency_ms: float


class ErrorBody(BaseModel):
    error: str = Field(description="the kind of problem, e.g. invalid_history, invalid_k, malformed_json")
    detail: str = Field(description="what is wrong, and where")
