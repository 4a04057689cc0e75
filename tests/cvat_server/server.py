"""A small CVAT REST API server for tests (CI has no CVAT).

It serves the endpoints agir's upload/download and the SDK's high-level client use, with bodies built
from `cvat_sdk` models (so the real client deserialises them), asynchronous task creation and export
behind `/api/requests/{rq_id}` polling, session (cookie + CSRF) and bearer-token auth, pagination,
and fault injection (a fraction of 5xx/429 answers, slow reads). `Annotator` plays the people in CVAT
through the same API with the SDK client: paints masks, adds polygons, deletes shapes and frames,
moves jobs through stages.

The export archives (Segmentation mask 1.1, CamVid 1.0, COCO 1.0) are written by this server's own
small painter, independent of agir's decoder, so tests compare two implementations.
"""

from __future__ import annotations

import datetime as dt
import email.parser
import io
import json
import random
import re
import secrets
import socket
import threading
import time
import zipfile
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import cv2
import numpy as np
from cvat_sdk.api_client import models
from cvat_sdk.api_client.model_utils import to_json
from cvat_sdk.masks import decode_mask, encode_mask
from PIL import Image

LABEL_TYPES = ("any", "cuboid", "ellipse", "mask", "points", "polygon", "polyline", "rectangle", "skeleton", "tag")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class HttpError(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


# --------------------------------------------------------------------------- painter (test-side truth)


def paint(shapes: Sequence[dict], width: int, height: int, index_by_label: dict[int, int]) -> np.ndarray:
    """The server's own rasteriser for exports: z_order then id, masks/polygons/rectangles."""
    canvas = np.zeros((height, width), dtype=np.uint8)
    for s in sorted(shapes, key=lambda s: (s.get("z_order", 0), s["id"])):
        v = index_by_label.get(s["label_id"], 0)
        if s["type"] == "mask":
            canvas[decode_mask([int(p) for p in s["points"]], image_width=width, image_height=height)] = v
        elif s["type"] == "polygon":
            pts = np.round(np.asarray(s["points"], dtype=float).reshape(-1, 2)).astype(np.int32)
            cv2.fillPoly(canvas, [pts], v)
        elif s["type"] == "rectangle":
            x1, y1, x2, y2 = (int(round(p)) for p in s["points"][:4])
            canvas[y1:y2, x1:x2] = v
    return canvas


def coco_rle(bitmap: np.ndarray) -> dict:
    """Uncompressed COCO RLE (column-major counts, starting with a zero run)."""
    flat = bitmap.T.ravel().astype(np.uint8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"counts": counts, "size": [int(bitmap.shape[0]), int(bitmap.shape[1])]}


# --------------------------------------------------------------------------- server


class CvatTestServer:
    """Start with `.start()`; `.url`, `.username`, `.password`, `.token`, `.annotator`."""

    def __init__(
        self,
        version: str = "2.80.0",
        *,
        username: str = "agir-bot",
        password: str | None = None,
        token: str | None = None,
        creation_polls: int = 2,
        seed: int = 0,
    ):
        self.version = version
        self.username = username
        self.password = password or "pw-" + secrets.token_hex(8)
        self.token = token or "tok-" + secrets.token_hex(12)
        self.creation_polls = creation_polls
        self.fault_rate = 0.0
        self.slow_rate = 0.0
        self.slow_seconds = 0.0
        self.shuffle_frames = False
        self.no_request_ids = False  # answer the data upload without an rq_id (older servers) and create at once
        self.fail_after_task_create = False  # simulate a client crash: raise in the client hook instead
        self.rng = random.Random(seed)
        self.lock = threading.RLock()
        self.sessions: dict[str, str] = {}  # sessionid -> csrftoken
        self.ids = {"project": 0, "label": 0, "task": 0, "job": 0, "shape": 0}
        self.projects: dict[int, dict] = {}
        self.labels: dict[int, dict] = {}
        self.tasks: dict[int, dict] = {}
        self.jobs: dict[int, dict] = {}
        self.requests: dict[str, dict] = {}
        self.exports: dict[str, bytes] = {}
        self.log: list[tuple[str, str, int]] = []  # (method, path, status)
        self.bodies: list[bytes] = []  # every request body seen, for secret checks
        self.faults_injected = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._annotator: Annotator | None = None

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> CvatTestServer:
        server = self

        class Handler(_Handler):
            cvat = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._annotator is not None:
            self._annotator.close()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def annotator(self) -> Annotator:
        if self._annotator is None:
            self._annotator = Annotator(self)
        return self._annotator

    def _next(self, kind: str) -> int:
        self.ids[kind] += 1
        return self.ids[kind]

    def count(self, method: str, pattern: str) -> int:
        rx = re.compile(pattern)
        return sum(1 for m, p, _ in self.log if m == method and rx.search(p))

    # ---------------------------------------------------------------- model builders
    def _abs(self, path: str) -> str:
        return self.url + path

    def about(self) -> dict:
        return to_json(
            models.About._from_openapi_data(
                name="Computer Vision Annotation Tool",
                description="agir test server",
                version=self.version,
                logo_url="",
                subtitle="test",
            )
        )

    def project_json(self, p: dict) -> dict:
        return to_json(
            models.ProjectRead._from_openapi_data(
                tasks=models.TasksSummary._from_openapi_data(count=sum(1 for t in self.tasks.values() if t["project_id"] == p["id"]), url=self._abs(f"/api/tasks?project_id={p['id']}")),
                labels=models.LabelsSummary._from_openapi_data(url=self._abs(f"/api/labels?project_id={p['id']}")),
                id=p["id"],
                name=p["name"],
                url=self._abs(f"/api/projects/{p['id']}"),
                status="annotation",
                created_date=p["created"],
                updated_date=p["updated"],
                dimension="2d",
                organization=None,
                organization_id=None,
                assignee=None,
                owner=None,
                source_storage=None,
                target_storage=None,
            )
        )

    def label_json(self, lab: dict) -> dict:
        return to_json(
            models.Label._from_openapi_data(
                name=lab["name"],
                id=lab["id"],
                color=lab["color"],
                type=lab.get("type", "any"),
                attributes=[],
                sublabels=[],
                project_id=lab.get("project_id"),
                task_id=lab.get("task_id"),
                has_parent=False,
                parent_id=None,
            )
        )

    def task_status(self, t: dict) -> str:
        stages = [j["stage"] for j in self.jobs.values() if j["task_id"] == t["id"]]
        if not stages:
            return "annotation"
        if "annotation" in stages:
            return "annotation"
        if "validation" in stages:
            return "validation"
        return "completed"

    def task_json(self, t: dict) -> dict:
        jobs = [j for j in self.jobs.values() if j["task_id"] == t["id"]]
        return to_json(
            models.TaskRead._from_openapi_data(
                jobs=models.JobsSummary._from_openapi_data(
                    count=len(jobs),
                    completed=sum(1 for j in jobs if j["stage"] == "acceptance" and j["state"] == "completed"),
                    validation=sum(1 for j in jobs if j["stage"] == "validation"),
                    url=self._abs(f"/api/jobs?task_id={t['id']}"),
                ),
                labels=models.LabelsSummary._from_openapi_data(url=self._abs(f"/api/labels?task_id={t['id']}")),
                url=self._abs(f"/api/tasks/{t['id']}"),
                id=t["id"],
                name=t["name"],
                project_id=t["project_id"],
                mode="annotation" if t["frames"] else "",
                status=self.task_status(t),
                size=len(t["frames"]),
                segment_size=t["segment_size"],
                overlap=t.get("overlap") or 0,
                image_quality=t.get("image_quality") or 70,
                created_date=t["created"],
                updated_date=t["updated"],
                subset=t.get("subset") or "",
                dimension="2d",
                data_chunk_size=t.get("chunk_size") or 36,
                organization=None,
                organization_id=None,
                assignee=None,
                owner=None,
                source_storage=None,
                target_storage=None,
            )
        )

    def job_json(self, j: dict) -> dict:
        t = self.tasks[j["task_id"]]
        return to_json(
            models.JobRead._from_openapi_data(
                issues=models.IssuesSummary._from_openapi_data(url=self._abs(f"/api/issues?job_id={j['id']}"), count=0),
                labels=models.LabelsSummary._from_openapi_data(url=self._abs(f"/api/labels?job_id={j['id']}")),
                url=self._abs(f"/api/jobs/{j['id']}"),
                id=j["id"],
                task_id=t["id"],
                project_id=t["project_id"],
                stage=j["stage"],
                state=j["state"],
                start_frame=j["start_frame"],
                stop_frame=j["stop_frame"],
                frame_count=j["stop_frame"] - j["start_frame"] + 1,
                type="annotation",
                mode="annotation",
                dimension="2d",
                status={"acceptance": "completed"}.get(j["stage"], j["stage"]),
                created_date=j["created"],
                updated_date=j["updated"],
                data_chunk_size=36,
                organization=None,
                assignee=None,
                source_storage=None,
                target_storage=None,
            )
        )

    def meta_json(self, t: dict) -> dict:
        return to_json(
            models.DataMetaRead._from_openapi_data(
                chunks_updated_date=t["created"],
                frames=[
                    models.FrameMeta._from_openapi_data(name=f["name"], related_files=0, width=f["width"], height=f["height"])
                    for f in t["frames"]
                ],
                deleted_frames=sorted(t["deleted"]),
                image_quality=t.get("image_quality") or 70,
                size=len(t["frames"]),
                start_frame=0,
                stop_frame=max(0, len(t["frames"]) - 1),
                frame_filter="",
                chunk_size=36,
            )
        )

    def shape_json(self, s: dict) -> dict:
        return to_json(
            models.LabeledShape._from_openapi_data(
                type=models.ShapeType(s["type"]),
                label_id=s["label_id"],
                frame=s["frame"],
                id=s["id"],
                points=s["points"],
                occluded=s.get("occluded", False),
                outside=s.get("outside", False),
                z_order=s.get("z_order", 0),
                rotation=s.get("rotation", 0.0),
                attributes=[],
                elements=[],
                group=s.get("group", 0),
                source=s.get("source", "manual"),
                _check_type=False,
            )
        )

    def annotations_json(self, t: dict) -> dict:
        body = models.LabeledData._from_openapi_data(version=t["version"], tags=[], shapes=[], tracks=[])
        out = to_json(body)
        out["shapes"] = [self.shape_json(s) for s in t["shapes"]]
        return out

    def request_json(self, rq: dict) -> dict:
        return to_json(
            models.Request._from_openapi_data(
                status=models.RequestStatus(rq["status"]),
                id=rq["id"],
                operation=models.RequestDataOperation._from_openapi_data(
                    type=rq["type"], target="task", task_id=rq["task_id"], project_id=None, job_id=None, format=rq.get("format")
                ),
                created_date=rq["created"],
                message=rq.get("message", ""),
                progress=1.0 if rq["status"] == "finished" else 0.0,
                result_id=rq.get("result_id"),
                result_url=rq.get("result_url"),
            )
        )

    @staticmethod
    def paginate(items: list[dict], query: dict, url: str) -> dict:
        page = int(query.get("page", ["1"])[0])
        size = int(query.get("page_size", ["10"])[0])
        chunk = items[(page - 1) * size : page * size]
        nxt = None
        if page * size < len(items):
            q = {k: v[0] for k, v in query.items()}
            q["page"] = str(page + 1)
            nxt = url + "?" + "&".join(f"{k}={v}" for k, v in q.items())
        return {"count": len(items), "next": nxt, "previous": None, "results": chunk}

    # ---------------------------------------------------------------- state changes
    def touch(self, task_id: int, frames: Sequence[int] | None = None) -> None:
        now = _now()
        t = self.tasks[task_id]
        t["updated"] = now
        t["version"] += 1
        for j in self.jobs.values():
            if j["task_id"] == task_id and (frames is None or any(j["start_frame"] <= f <= j["stop_frame"] for f in frames)):
                j["updated"] = now

    def add_shapes(self, t: dict, shapes: list[dict]) -> None:
        for s in shapes:
            lab = self.labels.get(s["label_id"])
            if lab is None or lab.get("project_id") != t["project_id"]:
                raise HttpError(400, f"label {s['label_id']} does not exist in the labels of task {t['id']}")
            if not 0 <= int(s["frame"]) < max(1, len(t["frames"])):
                raise HttpError(400, f"frame {s['frame']} out of range")
            if s["type"] == "mask":
                f = t["frames"][int(s["frame"])]
                decode_mask([int(p) for p in s["points"]], image_width=f["width"], image_height=f["height"])
            t["shapes"].append(
                {
                    "id": self._next("shape"),
                    "type": s["type"],
                    "label_id": int(s["label_id"]),
                    "frame": int(s["frame"]),
                    "points": list(s["points"]),
                    "z_order": int(s.get("z_order") or 0),
                    "occluded": bool(s.get("occluded", False)),
                    "outside": bool(s.get("outside", False)),
                    "rotation": float(s.get("rotation") or 0.0),
                    "source": s.get("source") or "manual",
                    "group": int(s.get("group") or 0),
                }
            )

    def finish_creation(self, rq: dict) -> None:
        t = self.tasks[rq["task_id"]]
        files = t.pop("uploads", [])
        order = rq.get("upload_file_order") or []
        if rq.get("sorting_method") == "predefined" and order:
            by_name = dict(files)
            files = [(n, by_name[n]) for n in order]
        elif rq.get("sorting_method", "lexicographical") == "lexicographical":
            files = sorted(files)
        if self.shuffle_frames:
            files = list(reversed(files))
        t["frames"], t["images"] = [], []
        for name, data in files:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
            t["frames"].append({"name": name, "width": w, "height": h})
            t["images"].append(data)
        t["image_quality"] = rq.get("image_quality", 70)
        seg = t["segment_size"] or len(files)
        now = _now()
        for start in range(0, len(files), seg):
            jid = self._next("job")
            self.jobs[jid] = {
                "id": jid,
                "task_id": t["id"],
                "start_frame": start,
                "stop_frame": min(start + seg, len(files)) - 1,
                "stage": "annotation",
                "state": "new",
                "created": now,
                "updated": now,
            }
        t["updated"] = now

    def export(self, t: dict, fmt: str) -> bytes:
        labels = [self.labels[i] for i in sorted(self.labels) if self.labels[i].get("project_id") == t["project_id"]]
        index = {lab["id"]: k for k, lab in enumerate(labels, start=1)}
        buf = io.BytesIO()
        live = [i for i in range(len(t["frames"])) if i not in t["deleted"]]
        with zipfile.ZipFile(buf, "w") as zf:
            masks = {}
            for i in live:
                f = t["frames"][i]
                masks[i] = paint([s for s in t["shapes"] if s["frame"] == i], f["width"], f["height"], index)
            stems = {i: t["frames"][i]["name"].rsplit(".", 1)[0] for i in live}
            palette = np.zeros((256, 3), dtype=np.uint8)
            for lab in labels:
                palette[index[lab["id"]]] = [int(lab["color"][k : k + 2], 16) for k in (1, 3, 5)]
            if fmt == "Segmentation mask 1.1":
                lines = ["# label:color_rgb:parts:actions", "background:0,0,0::"]
                lines += [f"{lab['name']}:{','.join(str(int(v)) for v in palette[index[lab['id']]])}::" for lab in labels]
                zf.writestr("labelmap.txt", "\n".join(lines) + "\n")
                zf.writestr("ImageSets/Segmentation/default.txt", "\n".join(stems.values()) + "\n")
                for i, m in masks.items():
                    zf.writestr(f"SegmentationClass/{stems[i]}.png", _png(palette[m]))
                    zf.writestr(f"SegmentationObject/{stems[i]}.png", _png(palette[m]))
            elif fmt == "CamVid 1.0":
                lines = ["0 0 0 background"] + [" ".join(str(int(v)) for v in palette[index[lab["id"]]]) + " " + lab["name"] for lab in labels]
                zf.writestr("label_colors.txt", "\n".join(lines) + "\n")
                zf.writestr("default.txt", "\n".join(f"/default/{s}.png /defaultannot/{s}.png" for s in stems.values()) + "\n")
                for i, m in masks.items():
                    zf.writestr(f"defaultannot/{stems[i]}.png", _png(palette[m]))
            elif fmt == "COCO 1.0":
                doc = {"licenses": [], "info": {}, "categories": [], "images": [], "annotations": []}
                doc["categories"] = [{"id": index[lab["id"]], "name": lab["name"], "supercategory": ""} for lab in labels]
                ann_id = 0
                for i in live:
                    f = t["frames"][i]
                    doc["images"].append({"id": i + 1, "file_name": f["name"], "width": f["width"], "height": f["height"]})
                    for s in sorted((s for s in t["shapes"] if s["frame"] == i), key=lambda s: (s["z_order"], s["id"])):
                        ann_id += 1
                        ann = {"id": ann_id, "image_id": i + 1, "category_id": index[s["label_id"]], "iscrowd": 0}
                        if s["type"] == "polygon":
                            ann["segmentation"] = [list(map(float, s["points"]))]
                        else:
                            bm = paint([s], f["width"], f["height"], {s["label_id"]: 1}) > 0
                            ann["segmentation"] = coco_rle(bm)
                            ann["iscrowd"] = 1
                        doc["annotations"].append(ann)
                zf.writestr("annotations/instances_default.json", json.dumps(doc))
            else:
                raise HttpError(400, f"Unknown format specified for the request: {fmt}")
        return buf.getvalue()


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8), "RGB").save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- HTTP handler

ROUTES: list[tuple[str, re.Pattern, str]] = [
    (m, re.compile("^" + p + "/?$"), h)
    for m, p, h in [
        ("GET", r"/api/server/about", "about"),
        ("POST", r"/api/auth/login", "login"),
        ("POST", r"/api/auth/logout", "logout"),
        ("GET", r"/api/users/self", "user_self"),
        ("GET", r"/api/projects", "projects_list"),
        ("POST", r"/api/projects", "projects_create"),
        ("GET", r"/api/projects/(\d+)", "projects_get"),
        ("PATCH", r"/api/projects/(\d+)", "projects_patch"),
        ("GET", r"/api/labels", "labels_list"),
        ("GET", r"/api/tasks", "tasks_list"),
        ("POST", r"/api/tasks", "tasks_create"),
        ("GET", r"/api/tasks/(\d+)", "tasks_get"),
        ("PATCH", r"/api/tasks/(\d+)", "tasks_patch"),
        ("DELETE", r"/api/tasks/(\d+)", "tasks_delete"),
        ("POST", r"/api/tasks/(\d+)/data", "data_post"),
        ("GET", r"/api/tasks/(\d+)/data", "data_get"),
        ("GET", r"/api/tasks/(\d+)/data/meta", "meta_get"),
        ("PATCH", r"/api/tasks/(\d+)/data/meta", "meta_patch"),
        ("GET", r"/api/tasks/(\d+)/annotations", "ann_get"),
        ("PUT", r"/api/tasks/(\d+)/annotations", "ann_put"),
        ("PATCH", r"/api/tasks/(\d+)/annotations", "ann_patch"),
        ("DELETE", r"/api/tasks/(\d+)/annotations", "ann_delete"),
        ("POST", r"/api/tasks/(\d+)/dataset/export", "export_post"),
        ("GET", r"/api/tasks/(\d+)/dataset/download", "export_get"),
        ("GET", r"/api/jobs", "jobs_list"),
        ("GET", r"/api/jobs/(\d+)", "jobs_get"),
        ("PATCH", r"/api/jobs/(\d+)", "jobs_patch"),
        ("GET", r"/api/requests/([\w:.\-]+)", "requests_get"),
    ]
]
PUBLIC = {"about", "login"}


class _Handler(BaseHTTPRequestHandler):
    cvat: CvatTestServer
    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16  # headers and body leave in one write (flushed per request by the base class)

    def setup(self) -> None:
        super().setup()
        # no Nagle/delayed-ACK stalls on keep-alive connections
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args) -> None:  # quiet: tests read server.log instead
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_HEAD(self):
        self._dispatch("HEAD")

    # ---------------------------------------------------------------- plumbing
    def _send(self, status: int, body: bytes | dict | list | None = None, headers: dict | None = None, ctype: str = "application/json") -> None:
        if isinstance(body, (dict, list)):
            data = json.dumps(body, default=str).encode()
        else:
            data = body or b""
        self.send_response(status)
        if data or ctype != "application/json":
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            for item in v if isinstance(v, list) else [v]:
                self.send_header(k, item)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        with self.cvat.lock:
            self.cvat.log.append((self.command, self.path, status))

    def _cookies(self) -> dict:
        out = {}
        for part in (self.headers.get("Cookie") or "").split(";"):
            if "=" in part:
                k, v = part.strip().split("=", 1)
                out[k] = v
        return out

    def _authorised(self) -> bool:
        auth = self.headers.get("Authorization") or ""
        if auth == f"Bearer {self.cvat.token}":
            return True
        cookies = self._cookies()
        csrf = self.cvat.sessions.get(cookies.get("sessionid", ""))
        if csrf is None:
            return False
        if self.command not in ("GET", "HEAD", "OPTIONS") and self.headers.get("X-CSRFToken") != csrf:
            raise HttpError(403, "CSRF Failed: CSRF token missing or incorrect.")
        return True

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        srv = self.cvat
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        with srv.lock:
            srv.bodies.append(raw)
            annotator = self.headers.get("X-Test-Annotator") == "1"
            fault = not annotator and srv.rng.random() < srv.fault_rate
            slow = not annotator and method == "GET" and srv.rng.random() < srv.slow_rate
        if fault:
            with srv.lock:
                srv.faults_injected += 1
                status = srv.rng.choice([500, 502, 503, 429])
            self._send(status, {"detail": "injected fault"}, headers={"Retry-After": "0"} if status == 429 else None)
            return
        if slow:
            time.sleep(srv.slow_seconds)
        for m, rx, name in ROUTES:  # noqa: B007 - `name` is used after the break
            match = rx.match(unquote(parts.path))
            if m == method and match:
                break
        else:
            self._send(404, {"detail": f"no route {method} {parts.path}"})
            return
        try:
            if name not in PUBLIC and not self._authorised():
                raise HttpError(401, "Authentication credentials were not provided.")
            with srv.lock:
                getattr(self, "h_" + name)(*[int(g) if g.isdigit() else g for g in match.groups()], query=query, raw=raw)
        except HttpError as exc:
            self._send(exc.status, {"detail": exc.detail})
        except (KeyError, ValueError) as exc:
            self._send(400, {"detail": f"bad request: {exc}"})

    def _json(self, raw: bytes) -> dict:
        return json.loads(raw or b"{}")

    def _task(self, tid: int) -> dict:
        t = self.cvat.tasks.get(tid)
        if t is None:
            raise HttpError(404, "Not found.")
        return t

    # ---------------------------------------------------------------- handlers
    def h_about(self, query, raw):
        self._send(200, self.cvat.about())

    def h_login(self, query, raw):
        body = self._json(raw)
        srv = self.cvat
        if body.get("username") != srv.username or body.get("password") != srv.password:
            raise HttpError(400, "Unable to log in with provided credentials.")
        sid, csrf = secrets.token_hex(16), secrets.token_hex(16)
        srv.sessions[sid] = csrf
        self._send(200, {"key": secrets.token_hex(10)}, headers={"Set-Cookie": [f"sessionid={sid}; Path=/; SameSite=Lax", f"csrftoken={csrf}; Path=/; SameSite=Lax"]})

    def h_logout(self, query, raw):
        self.cvat.sessions.pop(self._cookies().get("sessionid", ""), None)
        self._send(200, {})

    def h_user_self(self, query, raw):
        self._send(200, to_json(models.User._from_openapi_data(username=self.cvat.username, groups=["user"], id=1, is_active=True)))

    def h_projects_list(self, query, raw):
        name = query.get("name", [""])[0].lower()
        items = [self.cvat.project_json(p) for p in self.cvat.projects.values() if name in p["name"].lower()]
        self._send(200, self.cvat.paginate(items, query, self.cvat._abs("/api/projects")))

    def _add_labels(self, project_id: int, labels: list[dict]) -> None:
        """Apply a project's `labels` list the way CVAT 2.x's project serializer does, all or nothing (one transaction):
        an entry with `id` changes (or with `deleted` removes) that label of this project (404 for another project's
        label), an entry without `id` adds a label; a name taken in the project, or twice in the request, is a 400
        "All label names must be unique"; an unknown `type` is a 400. Labels not mentioned are left as they are."""
        srv = self.cvat
        current = {lid: dict(lab) for lid, lab in srv.labels.items() if lab.get("project_id") == project_id}
        added: list[dict] = []
        for lab in labels:
            if lab.get("type", "any") not in LABEL_TYPES:
                raise HttpError(400, f"labels: {lab.get('type')!r} is not a valid label type")
            if lab.get("id") is not None:
                lid = int(lab["id"])
                if lid not in current:
                    raise HttpError(404, f"Not found label with id #{lid} to change")
                if lab.get("deleted"):
                    del current[lid]
                else:
                    current[lid].update({k: lab[k] for k in ("name", "color", "type") if k in lab})
                continue
            if lab.get("deleted"):
                raise HttpError(400, "labels: Deleted label must have an ID")
            if not lab.get("name"):
                raise HttpError(400, "labels: name: This field is required.")
            added.append(lab)
        names = [x["name"] for x in current.values()] + [x["name"] for x in added]
        if len(names) != len(set(names)):
            raise HttpError(400, "All label names must be unique")
        for lid in [lid for lid, lab in srv.labels.items() if lab.get("project_id") == project_id and lid not in current]:
            del srv.labels[lid]
        srv.labels.update(current)
        for lab in added:
            lid = srv._next("label")
            srv.labels[lid] = {"id": lid, "name": lab["name"], "color": lab.get("color") or "#ff0000",
                               "type": lab.get("type", "any"), "project_id": project_id}

    def h_projects_create(self, query, raw):
        body = self._json(raw)
        srv = self.cvat
        pid = srv._next("project")
        now = _now()
        srv.projects[pid] = {"id": pid, "name": body["name"], "created": now, "updated": now}
        try:
            self._add_labels(pid, body.get("labels") or [])
        except HttpError:
            del srv.projects[pid]  # one transaction on the real server: no project without its labels
            raise
        self._send(201, srv.project_json(srv.projects[pid]))

    def h_projects_get(self, pid, query, raw):
        p = self.cvat.projects.get(pid)
        if p is None:
            raise HttpError(404, "Not found.")
        self._send(200, self.cvat.project_json(p))

    def h_projects_patch(self, pid, query, raw):
        p = self.cvat.projects.get(pid)
        if p is None:
            raise HttpError(404, "Not found.")
        body = self._json(raw)
        if "name" in body:
            p["name"] = body["name"]
        self._add_labels(pid, body.get("labels") or [])
        p["updated"] = _now()
        self._send(200, self.cvat.project_json(p))

    def h_labels_list(self, query, raw):
        srv = self.cvat
        if "project_id" in query:
            pid = int(query["project_id"][0])
        elif "task_id" in query:
            pid = self._task(int(query["task_id"][0]))["project_id"]
        elif "job_id" in query:
            pid = srv.tasks[srv.jobs[int(query["job_id"][0])]["task_id"]]["project_id"]
        else:
            pid = None
        items = [srv.label_json(lab) for lid, lab in sorted(srv.labels.items()) if pid is None or lab.get("project_id") == pid]
        self._send(200, srv.paginate(items, query, srv._abs("/api/labels")))

    def h_tasks_list(self, query, raw):
        srv = self.cvat
        name = query.get("name", [""])[0].lower()
        pid = int(query["project_id"][0]) if "project_id" in query else None
        items = [
            srv.task_json(t)
            for t in srv.tasks.values()
            if name in t["name"].lower() and (pid is None or t["project_id"] == pid)
        ]
        self._send(200, srv.paginate(items, query, srv._abs("/api/tasks")))

    def h_tasks_create(self, query, raw):
        body = self._json(raw)
        srv = self.cvat
        if body.get("project_id") and body["project_id"] not in srv.projects:
            raise HttpError(400, "project does not exist")
        tid = srv._next("task")
        now = _now()
        srv.tasks[tid] = {
            "id": tid,
            "name": body["name"],
            "project_id": body.get("project_id"),
            "segment_size": int(body.get("segment_size") or 0),
            "overlap": body.get("overlap"),
            "subset": body.get("subset"),
            "created": now,
            "updated": now,
            "frames": [],
            "images": [],
            "deleted": set(),
            "shapes": [],
            "uploads": [],
            "version": 0,
        }
        self._send(201, srv.task_json(srv.tasks[tid]))

    def h_tasks_get(self, tid, query, raw):
        self._send(200, self.cvat.task_json(self._task(tid)))

    def h_tasks_patch(self, tid, query, raw):
        t = self._task(tid)
        body = self._json(raw)
        for k in ("name", "subset"):
            if k in body:
                t[k] = body[k]
        self._send(200, self.cvat.task_json(t))

    def h_tasks_delete(self, tid, query, raw):
        self._task(tid)
        srv = self.cvat
        del srv.tasks[tid]
        for jid in [j for j, job in srv.jobs.items() if job["task_id"] == tid]:
            del srv.jobs[jid]
        self._send(204)

    def h_data_post(self, tid, query, raw):
        t = self._task(tid)
        srv = self.cvat
        if "Upload-Start" in self.headers:
            t["uploads"] = []
            self._send(202, {})
        elif "Upload-Multiple" in self.headers:
            ctype = self.headers.get("Content-Type", "")
            msg = email.parser.BytesParser().parsebytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + raw)
            for part in msg.get_payload():
                fname = part.get_filename()
                if fname:
                    t["uploads"].append((fname.replace("\\", "/").rsplit("/", 1)[-1], part.get_payload(decode=True)))
            self._send(200, {})
        elif "Upload-Finish" in self.headers:
            body = self._json(raw)
            rq_id = f"create:task-{tid}-{secrets.token_hex(4)}"
            srv.requests[rq_id] = {
                "id": rq_id,
                "type": "create:task",
                "task_id": tid,
                "status": "queued",
                "polls": srv.creation_polls,
                "created": _now(),
                "result_id": tid,
                **{k: body.get(k) for k in ("sorting_method", "upload_file_order", "image_quality")},
            }
            if srv.no_request_ids:
                srv.finish_creation(srv.requests.pop(rq_id))
                self._send(202, {})
                return
            self._send(202, to_json(models.RqId._from_openapi_data(rq_id=rq_id)))
        else:
            raise HttpError(400, "only the TUS-style Upload-Start/Multiple/Finish protocol is implemented here")

    def h_data_get(self, tid, query, raw):
        t = self._task(tid)
        if query.get("type", [""])[0] != "frame":
            raise HttpError(400, "only type=frame is implemented here")
        n = int(query["number"][0])
        if not 0 <= n < len(t["images"]):
            raise HttpError(400, "frame out of range")
        self._send(200, t["images"][n], ctype="image/jpeg")

    def h_meta_get(self, tid, query, raw):
        self._send(200, self.cvat.meta_json(self._task(tid)))

    def h_meta_patch(self, tid, query, raw):
        t = self._task(tid)
        body = self._json(raw)
        if "deleted_frames" in body:
            t["deleted"] = set(int(f) for f in body["deleted_frames"])
            self.cvat.touch(tid)
        self._send(200, self.cvat.meta_json(t))

    def h_ann_get(self, tid, query, raw):
        self._send(200, self.cvat.annotations_json(self._task(tid)))

    def h_ann_put(self, tid, query, raw):
        t = self._task(tid)
        body = self._json(raw)
        old = t["shapes"]
        t["shapes"] = []
        try:
            self.cvat.add_shapes(t, body.get("shapes") or [])
        except HttpError:
            t["shapes"] = old
            raise
        self.cvat.touch(tid)
        self._send(200, self.cvat.annotations_json(t))

    def h_ann_patch(self, tid, query, raw):
        t = self._task(tid)
        action = query.get("action", [""])[0]
        body = self._json(raw)
        shapes = body.get("shapes") or []
        if action == "create":
            self.cvat.add_shapes(t, shapes)
        elif action == "delete":
            ids = {int(s["id"]) for s in shapes}
            t["shapes"] = [s for s in t["shapes"] if s["id"] not in ids]
        elif action == "update":
            by_id = {int(s["id"]): s for s in shapes}
            for s in t["shapes"]:
                if s["id"] in by_id:
                    s.update({k: v for k, v in by_id[s["id"]].items() if k in ("points", "label_id", "z_order", "outside")})
        else:
            raise HttpError(400, "action must be create, update or delete")
        self.cvat.touch(tid, [int(s.get("frame", 0)) for s in shapes])
        self._send(200, {"version": t["version"], "tags": [], "shapes": [], "tracks": []})

    def h_ann_delete(self, tid, query, raw):
        t = self._task(tid)
        t["shapes"] = []
        self.cvat.touch(tid)
        self._send(204)

    def h_export_post(self, tid, query, raw):
        t = self._task(tid)
        fmt = query["format"][0]
        rq_id = f"export:task-{tid}-{secrets.token_hex(4)}"
        data = self.cvat.export(t, fmt)
        self.cvat.exports[rq_id] = data
        self.cvat.requests[rq_id] = {
            "id": rq_id,
            "type": "export:dataset",
            "task_id": tid,
            "format": fmt,
            "status": "queued",
            "polls": 1,
            "created": _now(),
            "result_url": self.cvat._abs(f"/api/tasks/{tid}/dataset/download?rq_id={rq_id}"),
        }
        self._send(202, to_json(models.RqId._from_openapi_data(rq_id=rq_id)))

    def h_export_get(self, tid, query, raw):
        data = self.cvat.exports.get(query["rq_id"][0])
        if data is None:
            raise HttpError(404, "Not found.")
        self._send(200, data, headers={"Content-Disposition": f'attachment; filename="task_{tid}_dataset.zip"'}, ctype="application/zip")

    def h_jobs_list(self, query, raw):
        srv = self.cvat
        tid = int(query["task_id"][0]) if "task_id" in query else None
        items = [srv.job_json(j) for jid, j in sorted(srv.jobs.items()) if tid is None or j["task_id"] == tid]
        self._send(200, srv.paginate(items, query, srv._abs("/api/jobs")))

    def h_jobs_get(self, jid, query, raw):
        j = self.cvat.jobs.get(jid)
        if j is None:
            raise HttpError(404, "Not found.")
        self._send(200, self.cvat.job_json(j))

    def h_jobs_patch(self, jid, query, raw):
        j = self.cvat.jobs.get(jid)
        if j is None:
            raise HttpError(404, "Not found.")
        body = self._json(raw)
        for k in ("stage", "state"):
            if k in body:
                j[k] = body[k]
        if "stage" in body and "state" not in body:
            j["state"] = "new"
        j["updated"] = _now()
        self.cvat.tasks[j["task_id"]]["updated"] = j["updated"]
        self._send(200, self.cvat.job_json(j))

    def h_requests_get(self, rq_id, query, raw):
        rq = self.cvat.requests.get(str(rq_id))
        if rq is None:
            raise HttpError(404, "Not found.")
        if rq["status"] != "finished":
            rq["polls"] -= 1
            rq["status"] = "started"
            if rq["polls"] <= 0:
                if rq["type"] == "create:task":
                    self.cvat.finish_creation(rq)
                rq["status"] = "finished"
        self._send(200, self.cvat.request_json(rq))


# --------------------------------------------------------------------------- annotator


class Annotator:
    """Plays the people in CVAT, through the REST API with the real cvat_sdk client."""

    def __init__(self, server: CvatTestServer):
        from cvat_sdk.core.client import Client, Config

        self.server = server
        self.client = Client(server.url, config=Config(status_check_period=0.01), check_server_version=False)
        # exempt from fault injection: the people are not under test
        self.client.api_client.default_headers["X-Test-Annotator"] = "1"
        self.client.login((server.username, server.password))

    def close(self) -> None:
        self.client.close()

    def labels(self, task_id: int) -> dict[str, int]:
        return {lab.name: lab.id for lab in self.client.tasks.retrieve(task_id).get_labels()}

    def project_labels(self, project_id: int) -> dict[str, dict]:
        """name -> {id, color, type} of a project's labels, as the SDK reads them."""
        labels = self.client.projects.retrieve(project_id).get_labels()
        return {lab.name: {"id": lab.id, "color": lab.color, "type": lab.type} for lab in labels}

    def update_project_labels(self, project_id: int, labels: list[dict]) -> None:
        """PATCH /api/projects/{id} {"labels": [...]} through the SDK (add: no id; change or delete: with id)."""
        request = models.PatchedProjectWriteRequest(labels=[models.PatchedLabelRequest(**lab) for lab in labels])
        self.client.projects.retrieve(project_id).update(request)

    def frame_size(self, task_id: int, frame: int) -> tuple[int, int]:
        f = self.client.tasks.retrieve(task_id).get_frames_info()[frame]
        return f.width, f.height

    def _create(self, task_id: int, shapes: list) -> None:
        from cvat_sdk.core.proxies.annotations import AnnotationUpdateAction

        task = self.client.tasks.retrieve(task_id)
        task.update_annotations(models.PatchedLabeledDataRequest(shapes=shapes), action=AnnotationUpdateAction.CREATE)

    def paint_mask(self, task_id: int, frame: int, label: str, bitmap: np.ndarray, z_order: int = 1) -> None:
        """Draw a brush mask on top of what is there."""
        ys, xs = np.nonzero(bitmap)
        bbox = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
        points = encode_mask(bitmap.astype(bool), bbox=bbox)
        shape = models.LabeledShapeRequest(
            type=models.ShapeType("mask"), frame=frame, label_id=self.labels(task_id)[label], points=points, z_order=z_order, source="manual"
        )
        self._create(task_id, [shape])

    def add_polygon(self, task_id: int, frame: int, label: str, points: Sequence[float], z_order: int = 1) -> None:
        shape = models.LabeledShapeRequest(
            type=models.ShapeType("polygon"), frame=frame, label_id=self.labels(task_id)[label], points=[float(p) for p in points], z_order=z_order
        )
        self._create(task_id, [shape])

    def add_rectangle(self, task_id: int, frame: int, label: str, box: Sequence[float], z_order: int = 1) -> None:
        shape = models.LabeledShapeRequest(
            type=models.ShapeType("rectangle"), frame=frame, label_id=self.labels(task_id)[label], points=[float(p) for p in box], z_order=z_order
        )
        self._create(task_id, [shape])

    def shapes(self, task_id: int, frame: int | None = None) -> list:
        anns = self.client.tasks.retrieve(task_id).get_annotations()
        return [s for s in anns.shapes if frame is None or s.frame == frame]

    def delete_shapes(self, task_id: int, frame: int | None = None, label: str | None = None) -> int:
        lid = self.labels(task_id)[label] if label else None
        ids = [s.id for s in self.shapes(task_id, frame) if lid is None or s.label_id == lid]
        if ids:
            self.client.tasks.retrieve(task_id).remove_annotations(ids=ids)
        return len(ids)

    def delete_frames(self, task_id: int, frames: Sequence[int]) -> None:
        task = self.client.tasks.retrieve(task_id)
        current = set(task.get_meta().deleted_frames)
        task.remove_frames_by_ids(sorted(current | set(frames)))

    def set_job(self, job_id: int, stage: str, state: str) -> None:
        self.client.jobs.retrieve(job_id).update(models.PatchedJobWriteRequest(stage=models.JobStage(stage), state=models.OperationStatus(state)))

    def jobs(self, task_id: int) -> list:
        return self.client.tasks.retrieve(task_id).get_jobs()

    def finish_task(self, task_id: int, stage: str = "acceptance", state: str = "completed") -> None:
        for job in self.jobs(task_id):
            self.set_job(job.id, stage, state)
