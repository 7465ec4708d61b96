"""DELETE on a job, artifact or dataset of the API: the Storage page's delete,
answered as JSON. ``?chain=true`` also removes what depends on it."""

from __future__ import annotations

from studio.api.errors import ApiError
from studio.storage.services import StorageRefusal, storage_delete


def delete_json(request, target) -> dict:
    chain = request.GET.get("chain", "").lower() in ("1", "true", "yes")
    try:
        deletion = storage_delete(user=request.caller.user, target=target, chain=chain, request=request)
    except StorageRefusal as refusal:
        raise ApiError(refusal.status, refusal.message, field="chain" if refusal.status == 409 else None,
                       blocking=refusal.items) from None
    return {"object": "deletion", "id": deletion.pk, "deleted": [item["label"] for item in deletion.items],
            "bytes": deletion.bytes, "restorable_until": deletion.purge_after.isoformat()}
