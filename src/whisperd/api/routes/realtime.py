"""Live transcription: OpenAI's Realtime WebSocket, in transcription mode (``/v1/realtime``)."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from whisperd.api.deps import LiveDep
from whisperd.realtime.protocol import SUBPROTOCOL

router = APIRouter(prefix="/v1", tags=["Live transcription"])


@router.websocket("/realtime")
async def realtime(websocket: WebSocket, live: LiveDep, intent: str | None = None) -> None:
    """A transcription session: send ``session.update`` and ``input_audio_buffer.append``
    events, receive turns' partial (``delta``) and final (``completed``) transcripts. See
    docs/realtime.md."""
    offered = websocket.scope.get("subprotocols") or ()
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    await live.serve(websocket, configured=intent == "transcription")
