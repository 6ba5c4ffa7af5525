// The heartvec web page: upload a label volume, follow its job, look at the labelled heart.
import * as THREE from "three";
import { OrbitControls } from "three/addons/controls/OrbitControls.js";
import { GLTFLoader } from "three/addons/loaders/GLTFLoader.js";

// matplotlib's tab10, the colours of every heartvec picture (class index 1..10)
const TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
const $ = (id) => document.getElementById(id);

const tokenInput = $("token");
tokenInput.value = sessionStorage.getItem("heartvec-token") || "";
tokenInput.addEventListener("change", () => {
  sessionStorage.setItem("heartvec-token", tokenInput.value);
  refreshJobs();
});

function authHeaders() {
  return tokenInput.value ? { Authorization: `Bearer ${tokenInput.value}` } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail; } catch { /* not JSON */ }
    throw new Error(`${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  }
  return response;
}

function say(text, isError = false) {
  $("message").textContent = text;
  $("message").className = isError ? "error" : "";
}

// --- upload ---------------------------------------------------------------------------------

function upload(file) {
  const form = new FormData();
  form.append("file", file);
  form.append("labels", $("labels").value);
  form.append("resolution", $("resolution").value);
  form.append("refine_steps", $("refine").value);
  form.append("refine_points", $("points").value);
  form.append("frame_search", $("frames").value);
  const request = new XMLHttpRequest();
  request.open("POST", "/reconstruct");
  for (const [key, value] of Object.entries(authHeaders())) request.setRequestHeader(key, value);
  request.upload.onprogress = (e) => {
    if (e.lengthComputable) say(`uploading ${file.name}: ${Math.round((100 * e.loaded) / e.total)}%`);
  };
  request.onload = () => {
    const body = JSON.parse(request.responseText || "{}");
    if (request.status === 202) {
      say(`${file.name} accepted`);
      showJob(body.id);
      refreshJobs();
    } else {
      say(`${file.name} refused (${request.status}): ${JSON.stringify(body.detail)}`, true);
    }
  };
  request.onerror = () => say("upload failed: the server did not answer", true);
  request.send(form);
}

const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
});
$("file").addEventListener("change", (e) => { if (e.target.files.length) upload(e.target.files[0]); });

// --- jobs -----------------------------------------------------------------------------------

async function refreshJobs() {
  try {
    const { items } = await (await api("/jobs?limit=15")).json();
    $("jobs").replaceChildren(...items.map((job) => {
      const item = document.createElement("li");
      item.innerHTML = `<span>${job.input.name || job.id}</span><span class="badge ${job.status}">${job.status}</span>`;
      item.addEventListener("click", () => showJob(job.id));
      return item;
    }));
  } catch (error) {
    say(error.message, true);
  }
}

let shownJob = null;

async function showJob(id) {
  shownJob = id;
  $("job").hidden = false;
  $("result").hidden = true;
  $("job-id").textContent = id;
  document.body.dataset.viewer = "waiting";
  while (shownJob === id) {
    const job = await (await api(`/jobs/${id}`)).json();
    $("status").textContent = job.status;
    $("status").className = `badge ${job.status}`;
    $("stage").textContent = job.stage ? `stage: ${job.stage}` : "";
    $("progress").value = job.progress;
    $("error").textContent = job.error || "";
    if (FINISHED.has(job.status)) {
      if (job.status === "succeeded") await showResult(job);
      refreshJobs();
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

async function blobUrl(url) {
  return URL.createObjectURL(await (await api(url)).blob());
}

async function showResult(job) {
  $("result").hidden = false;
  $("downloads").replaceChildren(...job.results.map((result) => {
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.textContent = `${result.name} (${(result.bytes / 1024).toFixed(0)} KiB)`;
    if (result.name === "shape_code.npz") {
      link.title = "the heart's shape code: `heartvec decode shape_code.npz --out DIR` draws it again";
      link.textContent += " — the shape code";
    }
    link.href = "#";
    link.addEventListener("click", async (e) => {
      e.preventDefault();
      const save = document.createElement("a");
      save.href = await blobUrl(result.url);
      save.download = result.name.split("/").pop();
      save.click();
    });
    item.append(link);
    return item;
  }));
  const frame = job.metrics.frame_search;
  $("frame").hidden = !frame;
  if (frame) {
    $("frame").textContent = `frame search: centre moved [${frame.shift_mm.join(", ")}] mm, ` +
      `scale ×${frame.scale_factor.toFixed(3)} (score ${frame.centred_score.toFixed(3)} → ` +
      `${frame.score.toFixed(3)}, ${frame.frames} frames)`;
  }
  $("preview").src = await blobUrl(`/jobs/${job.id}/results/preview.png`);
  const classIndex = {};
  for (const result of job.results) {
    const match = result.name.match(/^meshes\/(\d+)_(.+)\.ply$/);
    if (match) classIndex[match[2]] = Number(match[1]);
  }
  const glb = await (await api(`/jobs/${job.id}/results/heart.glb`)).arrayBuffer();
  const slices = job.results.some((r) => r.name === "slices.json")
    ? await (await api(`/jobs/${job.id}/results/slices.json`)).json()
    : { slices: [] };
  showHeart(glb, classIndex, job.metrics.classes, slices);
}

// --- 3D viewer ------------------------------------------------------------------------------

const viewer = { renderer: null, scene: null, camera: null, controls: null };

function setUpViewer() {
  const element = $("viewer");
  viewer.renderer = new THREE.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
  viewer.renderer.setSize(element.clientWidth, element.clientHeight);
  element.replaceChildren(viewer.renderer.domElement);
  viewer.camera = new THREE.PerspectiveCamera(40, element.clientWidth / element.clientHeight, 1, 5000);
  viewer.controls = new OrbitControls(viewer.camera, viewer.renderer.domElement);
  const animate = () => {
    requestAnimationFrame(animate);
    viewer.controls.update();
    if (viewer.scene) viewer.renderer.render(viewer.scene, viewer.camera);
  };
  animate();
}

// the input's class outlines (world mm) on three orthogonal slices, one line per outline
function inputOutlines(slices) {
  const group = new THREE.Group();
  for (const slice of slices.slices) {
    for (const [index, lines] of Object.entries(slice.classes)) {
      const material = new THREE.LineBasicMaterial({ color: TAB10[(Number(index) - 1) % 10] });
      for (const line of lines) {
        const points = line.map(([x, y, z]) => new THREE.Vector3(x, y, z));
        group.add(new THREE.Line(new THREE.BufferGeometry().setFromPoints(points), material));
      }
    }
  }
  return group;
}

function showHeart(glb, classIndex, metrics, slices) {
  if (!viewer.renderer) setUpViewer();
  new GLTFLoader().parse(glb, "", (gltf) => {
    const scene = new THREE.Scene();
    scene.background = new THREE.Color("#111");
    scene.add(new THREE.HemisphereLight("#ffffff", "#444444", 2.0));
    const light = new THREE.DirectionalLight("#ffffff", 1.5);
    light.position.set(1, 1, 2);
    scene.add(light);
    const parts = {};
    gltf.scene.traverse((node) => {
      if (!node.isMesh) return;
      const name = node.name in classIndex ? node.name : node.parent?.name;
      const index = classIndex[name] || 1;
      node.material = new THREE.MeshStandardMaterial({
        color: TAB10[(index - 1) % 10], roughness: 0.6, transparent: true, opacity: 1, side: THREE.DoubleSide,
      });
      parts[name] = node;
    });
    scene.add(gltf.scene);
    const outlines = inputOutlines(slices);
    outlines.visible = $("outlines").checked;
    $("outlines").onchange = () => { outlines.visible = $("outlines").checked; };
    scene.add(outlines);
    const box = new THREE.Box3().setFromObject(gltf.scene);
    const centre = box.getCenter(new THREE.Vector3());
    const size = box.getSize(new THREE.Vector3()).length();
    // RAS+ world millimetres: look from the patient's front (anterior, +y), superior up (+z)
    viewer.camera.up.set(0, 0, 1);
    viewer.camera.position.copy(centre).add(new THREE.Vector3(0.2 * size, 1.2 * size, 0.3 * size));
    viewer.controls.target.copy(centre);
    viewer.scene = scene;
    fillClassTable(parts, classIndex, metrics);
    requestAnimationFrame(() => { document.body.dataset.viewer = `ready:${Object.keys(parts).length}`; });
  }, (error) => say(`could not read heart.glb: ${error.message || error}`, true));
}

function fillClassTable(parts, classIndex, metrics) {
  const rows = Object.keys(parts).sort((a, b) => classIndex[a] - classIndex[b]).map((name) => {
    const row = document.createElement("tr");
    const dice = metrics?.[name]?.dice;
    row.innerHTML = `<td><input type="checkbox" checked aria-label="show ${name}"></td>
      <td><span class="swatch" style="background:${TAB10[(classIndex[name] - 1) % 10]}"></span> ${name}</td>
      <td>${dice == null ? "" : dice.toFixed(3)}</td>
      <td><input type="range" min="0" max="1" step="0.05" value="1" aria-label="opacity of ${name}"></td>`;
    const [toggle, opacity] = row.querySelectorAll("input");
    toggle.addEventListener("change", () => { parts[name].visible = toggle.checked; });
    opacity.addEventListener("input", () => {
      parts[name].material.opacity = Number(opacity.value);
      parts[name].material.depthWrite = Number(opacity.value) > 0.99;
    });
    return row;
  });
  $("classes").tBodies[0].replaceChildren(...rows);
}

// the options' ranges and label tables as the API defines them (its OpenAPI schema)
async function applyOptionSchema() {
  const spec = await (await fetch("/openapi.json")).json();
  const fields = spec.paths["/reconstruct"].post.requestBody.content["multipart/form-data"]
    .schema.properties;
  const bounded = [
    ["resolution", "resolution"], ["refine", "refine_steps"], ["points", "refine_points"],
    ["frames", "frame_search"],
  ];
  for (const [id, name] of bounded) {
    $(id).min = fields[name].minimum;
    $(id).max = fields[name].maximum;
  }
  $("points").value = fields.refine_points.default;
  $("frames").value = fields.frame_search.default;
  const tables = fields.labels.enum;
  $("labels").replaceChildren(...tables.map((name) => new Option(name, name)));
}

applyOptionSchema().catch(() => { /* the API checks the values anyway */ });
refreshJobs();
setInterval(refreshJobs, 5000);
