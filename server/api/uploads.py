"""Upload and file routes, in the shapes both fal clients use, plus ``GET /files/...``.

- @fal-ai/client and fal-client's fallback: ``POST /storage/upload/initiate`` -> ``{upload_url, file_url}``, then a
  raw ``PUT upload_url``; large files: ``/storage/upload/initiate-multipart``, ``PUT upload_url/<n>``,
  ``POST upload_url/complete``.
- fal-client's default: ``POST /storage/auth/token`` -> a Bearer token, then ``POST /files/upload`` with the bytes
  and ``X-Fal-File-Name`` -> ``{access_url}``; large files: ``POST /files/upload/multipart``,
  ``PUT <access_url>/multipart/<id>/<n>`` (ETag header) and ``POST <access_url>/multipart/<id>/complete``.

The upload URLs carry a random id that authorizes the PUTs (the JS client sends them without credentials); the
request guard (``server/api/guard.py``) refuses an unknown, expired or revoked id, and a body over its limit, before
any body is read. The bytes go through these routes into the file store whichever it is (a directory or an S3
bucket: see ``server/files/s3.py`` for why not presigned PUTs), and the URLs handed out are ``/files/`` URLs of
this server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from ..files.store import MAX_PARTS, FileStore, UploadTooLarge
from .auth import Auth
from .deps import AuthDep, BaseUrlDep, CallerDep, FilesDep


class InitiateUpload(BaseModel):
    content_type: str = Field("application/octet-stream", description="MIME type of the file")
    file_name: str | None = Field(None, description="Name the file URL ends with")


class UploadUrls(BaseModel):
    upload_url: str
    file_url: str


class Part(BaseModel):
    partNumber: int = Field(ge=1, le=MAX_PARTS)
    etag: str | None = None


class CompleteUpload(BaseModel):
    parts: list[Part] = Field(max_length=MAX_PARTS, description=f"every part uploaded, each once (at most {MAX_PARTS})")


PartNumber = Annotated[int, PathParam(ge=1, le=MAX_PARTS, description="the part's number, 1 to 10000")]


router = APIRouter(tags=["storage"])


def _pending(files: FileStore, auth: Auth, upload_id: str, key: str | None = None) -> str:
    """The file key of an open upload (the guard checked it before the body; a part may still name another)."""
    found = files.pending(upload_id)
    if found is None or not auth.is_active(found.owner) or (key is not None and found.key != key):
        raise HTTPException(404, "unknown, expired or finished upload")
    return found.key


ALREADY_RECEIVED = "this upload was already received (an upload URL takes its file once)"


async def _receive(files: FileStore, key: str, chunks: AsyncIterator[bytes]) -> None:
    try:
        await files.receive(key, chunks)
    except UploadTooLarge as exc:
        raise HTTPException(413, str(exc)) from None
    except FileExistsError:
        raise HTTPException(409, ALREADY_RECEIVED) from None


async def _receive_part(files: FileStore, upload_id: str, part_number: int, request: Request) -> JSONResponse:
    try:
        etag = await files.receive_part(upload_id, part_number, request.stream())
    except UploadTooLarge as exc:
        raise HTTPException(413, str(exc)) from None
    return JSONResponse({"partNumber": part_number, "etag": etag}, headers={"etag": etag})


async def _complete(files: FileStore, upload_id: str, body: CompleteUpload) -> str:
    numbers = [part.partNumber for part in body.parts]
    try:
        return await run_in_threadpool(files.complete_upload, upload_id, numbers)
    except UploadTooLarge as exc:
        raise HTTPException(413, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    except FileExistsError:
        raise HTTPException(409, ALREADY_RECEIVED) from None


@router.post(
    "/storage/upload/initiate", response_model=UploadUrls, summary="Start an upload: PUT the bytes to upload_url"
)
@router.post(
    "/storage/upload/initiate-multipart",
    response_model=UploadUrls,
    operation_id="initiate_multipart",
    summary="Start a multipart upload: PUT upload_url/<n> per part, then POST upload_url/complete",
)
def initiate(body: InitiateUpload, files: FilesDep, caller: CallerDep, base_url: BaseUrlDep) -> UploadUrls:
    key = files.new_key(body.file_name, body.content_type)
    upload_id = files.start_upload(key, caller.key_id)
    return UploadUrls(upload_url=f"{base_url}/storage/upload/{upload_id}", file_url=files.url(key, base_url))


@router.put("/storage/upload/{upload_id}", summary="The bytes of an upload started with /storage/upload/initiate")
async def put_upload(
    upload_id: str, request: Request, files: FilesDep, auth: AuthDep, base_url: BaseUrlDep
) -> dict[str, str]:
    key = await run_in_threadpool(_pending, files, auth, upload_id)
    await _receive(files, key, request.stream())
    await run_in_threadpool(files.end_upload, upload_id)
    return {"file_url": files.url(key, base_url)}


@router.put("/storage/upload/{upload_id}/{part_number}", summary="One part of a multipart upload")
async def put_part(
    upload_id: str, part_number: PartNumber, request: Request, files: FilesDep, auth: AuthDep
) -> JSONResponse:
    await run_in_threadpool(_pending, files, auth, upload_id)
    return await _receive_part(files, upload_id, part_number, request)


@router.post("/storage/upload/{upload_id}/complete", summary="Join the parts of a multipart upload")
async def complete_storage(
    upload_id: str, body: CompleteUpload, files: FilesDep, auth: AuthDep, base_url: BaseUrlDep
) -> dict[str, str]:
    await run_in_threadpool(_pending, files, auth, upload_id)
    return {"file_url": files.url(await _complete(files, upload_id, body), base_url)}


@router.post("/storage/auth/token", summary="A short-lived upload token (fal-client's CDN flow)")
def upload_token(auth: AuthDep, caller: CallerDep, base_url: BaseUrlDep) -> dict[str, str]:
    return auth.issue_upload_token(caller, base_url)


@router.post("/files/upload", summary="Upload a file in one request (X-Fal-File-Name)")
async def upload(request: Request, files: FilesDep, base_url: BaseUrlDep) -> dict[str, str]:
    content_type = request.headers.get("content-type", "application/octet-stream")
    key = files.new_key(request.headers.get("x-fal-file-name"), content_type)
    await _receive(files, key, request.stream())
    return {"access_url": files.url(key, base_url)}


@router.post("/files/upload/multipart", summary="Start a multipart upload (fal-client)")
def upload_multipart(request: Request, files: FilesDep, caller: CallerDep, base_url: BaseUrlDep) -> dict[str, Any]:
    key = files.new_key(request.headers.get("x-fal-file-name"), request.headers.get("content-type"))
    upload_id = files.start_upload(key, caller.key_id)
    return {"access_url": files.url(key, base_url), "uploadId": upload_id}


@router.put("/files/{token}/{name}/multipart/{upload_id}/{part_number}", summary="One part (fal-client)")
async def put_file_part(
    token: str, name: str, upload_id: str, part_number: PartNumber, request: Request, files: FilesDep, auth: AuthDep
) -> JSONResponse:
    await run_in_threadpool(_pending, files, auth, upload_id, f"{token}/{name}")
    return await _receive_part(files, upload_id, part_number, request)


@router.post("/files/{token}/{name}/multipart/{upload_id}/complete", summary="Join the parts (fal-client)")
async def complete_file(
    token: str, name: str, upload_id: str, body: CompleteUpload, files: FilesDep, auth: AuthDep, base_url: BaseUrlDep
) -> dict[str, str]:
    await run_in_threadpool(_pending, files, auth, upload_id, f"{token}/{name}")
    return {"access_url": files.url(await _complete(files, upload_id, body), base_url)}


@router.get("/files/{token}/{name}", summary="A generated or uploaded file")
@router.head("/files/{token}/{name}", include_in_schema=False)
def get_file(token: str, name: str, files: FilesDep) -> Response:
    """The file itself from a directory store; a redirect to a fresh presigned (or public) URL from a bucket."""
    response = files.response(f"{token}/{name}")
    if response is None:
        raise HTTPException(404, "file not found")
    return response
