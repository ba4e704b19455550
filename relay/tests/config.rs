//! Job files: the example loads, every key's bad value is refused with an error that
//! names the key, and unknown keys or wrong types name theirs.

use std::path::{Path, PathBuf};

use crowdgrad_relay::config::JobConfig;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("relay/ has a parent").to_path_buf()
}

/// Writes `toml` to a job file and loads it.
fn load(toml: &str) -> Result<JobConfig, String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("job.toml");
    std::fs::write(&path, toml).expect("write job file");
    JobConfig::load(&path).map_err(|e| e.to_string())
}

#[test]
fn the_example_job_loads_with_its_values() {
    let text = std::fs::read_to_string(repo().join("relay/jobs/shakespeare.toml")).expect("example job");
    // Its dataset path is relative to the repository root.
    let job = load(&text.replace("../shared", &repo().join("../shared").display().to_string()));
    if !repo().join("../shared/datasets/tinyshakespeare.txt").is_file() {
        assert!(job.unwrap_err().contains("data.path"), "a missing dataset names data.path");
        return;
    }
    let job = job.expect("the example loads");
    assert_eq!((job.model.layers, job.model.width, job.inner.steps, job.round.target), (4, 128, 50, 8));
    assert_eq!(job.round.deadline_secs, 60.0, "integers are accepted for seconds");
}

#[test]
fn the_gpt2_small_job_loads_with_its_values() {
    let text = std::fs::read_to_string(repo().join("relay/jobs/gpt2-small.toml")).expect("GPT-2 small job");
    let job = load(&text.replace("../shared", &repo().join("../shared").display().to_string()));
    if !repo().join("../shared/datasets/tinyshakespeare.txt").is_file() {
        assert!(job.unwrap_err().contains("data.path"), "a missing dataset names data.path");
        return;
    }
    let job = job.expect("the GPT-2 small job loads");
    assert_eq!(job.model.layout().total, 123_886_080, "GPT-2 small at a context of 256");
    assert_eq!(job.data.tokenizer, crowdgrad_relay::tokenizer::Tokenizer::Gpt2);
}

#[test]
fn gpt2_smalls_shape_is_a_job_with_no_fixed_limit_on_its_size() {
    let job = load(
        "[model]\nvocab = 50304\ncontext = 1024\nlayers = 12\nheads = 12\nwidth = 768\n[data]\ntokenizer = \"gpt2\"",
    )
    .expect("GPT-2 small is a job");
    assert_eq!(job.model.layout().total, 124_475_904);
}

#[test]
fn an_empty_file_is_the_default_job() {
    assert_eq!(load("").expect("empty file"), JobConfig::default());
}

#[test]
fn every_bad_value_names_its_key() {
    let cases = [
        ("name = \"\"", "name"),
        ("[model]\nvocab = 300", "model.vocab"),
        ("[model]\nvocab = 70000", "model.vocab"),
        ("[data]\ntokenizer = \"gpt2\"", "model.vocab"),
        ("[data]\nval_path = \"/no/such/val.bin\"", "data.val_path"),
        ("[model]\ncontext = 0", "model.context"),
        ("[model]\nlayers = 0", "model.layers"),
        ("[model]\nheads = 0", "model.heads"),
        ("[model]\nwidth = 65", "model.width"),
        ("[data]\npath = \"/no/such/file.txt\"", "data.path"),
        ("[data]\nshards = 0", "data.shards"),
        ("[data]\neval_batches = 0", "data.eval_batches"),
        ("[inner]\nsteps = 0", "inner.steps"),
        ("[inner]\nsteps = 1000000", "inner.steps"),
        ("[inner]\nbatch = 0", "inner.batch"),
        ("[inner]\nlr = 0.0", "inner.lr"),
        ("[inner]\nlr = nan", "inner.lr"),
        ("[inner]\nmin_lr = 1.0", "inner.min_lr"),
        ("[inner]\nwarmup_steps = 100\ndecay_steps = 10", "inner.decay_steps"),
        ("[inner]\nbeta1 = 1.0", "inner.beta1"),
        ("[inner]\nbeta2 = -0.1", "inner.beta2"),
        ("[inner]\neps = 0.0", "inner.eps"),
        ("[inner]\nweight_decay = 2.0", "inner.weight_decay"),
        ("[inner]\ngrad_clip = -1.0", "inner.grad_clip"),
        ("[outer]\nlr = 0.0", "outer.lr"),
        ("[outer]\nmomentum = 1.0", "outer.momentum"),
        ("[round]\ntarget = 0", "round.target"),
        ("[round]\ntarget = 2\nmin = 3", "round.min"),
        ("[round]\ndeadline_secs = 0", "round.deadline_secs"),
        ("[round]\nunit_deadline_secs = inf", "round.unit_deadline_secs"),
        ("[round]\nmax_staleness = 17", "round.max_staleness"),
        ("[storage]\ndir = \"\"", "storage.dir"),
        ("[storage]\nkeep_last = 0", "storage.keep_last"),
        ("[compression]\nchunk = 0", "compression.chunk"),
        ("[compression]\nchunk = 64\nk = 65", "compression.k"),
        ("[compression]\nbits = 3", "compression.bits"),
        ("[compression]\ndecay = 1.5", "compression.decay"),
        ("[aggregation]\ntrim = 0.5", "aggregation.trim"),
        ("[aggregation]\nclip = 0", "aggregation.clip"),
        ("[aggregation]\nmax_norm_ratio = 0.5", "aggregation.max_norm_ratio"),
        ("[verify]\ntrust_after = 0", "verify.trust_after"),
        ("[verify]\nmin_replay_rate = 2", "verify.min_replay_rate"),
        ("[verify]\nmin_cosine = 1.5", "verify.min_cosine"),
        ("[verify]\nmin_projection_compressed = -20", "verify.min_projection_compressed"),
        ("[verify]\nmax_replay_ratio = 0.5", "verify.max_replay_ratio"),
        ("[verify]\nloss_batches = 1000", "verify.loss_batches"),
        ("[verify]\nloss_margin = -1", "verify.loss_margin"),
        ("[verify]\nredundancy = 1.5", "verify.redundancy"),
        ("[limits]\nsessions_per_ip = 0", "limits.sessions_per_ip"),
        ("[limits]\nmessages_per_minute = 0", "limits.messages_per_minute"),
        ("[limits]\norigins = [\"example.org\"]", "limits.origins"),
        ("[limits]\nping_secs = 0", "limits.ping_secs"),
        ("[limits]\nping_secs = 30\nidle_secs = 40", "limits.idle_secs"),
        ("[mesh]\npeers = 100", "mesh.peers"),
        ("[mesh]\nsignals_per_link = 0", "mesh.signals_per_link"),
        ("[mesh]\nice_servers = [\"http://stun.example.org\"]", "mesh.ice_servers"),
        ("[mesh]\nice_servers = [{ urls = [], username = \"u\" }]", "mesh.ice_servers"),
        ("[mesh]\nice_servers = [{ urls = [\"ftp://x\"] }]", "mesh.ice_servers"),
        ("[mesh]\nturn_urls = [\"turn:t.example.org:3478\"]", "mesh.turn_secret"),
        ("[mesh]\nturn_urls = [\"stun:t.example.org:3478\"]\nturn_secret = \"s\"", "mesh.turn_urls"),
        ("[mesh]\nturn_urls = [\"turn:t.example.org\"]\nturn_secret = \"s\"\nturn_ttl_secs = 1", "mesh.turn_ttl_secs"),
        ("[mesh]\nrelay_only = true\nice_servers = [\"stun:s.example.org\"]", "mesh.relay_only"),
        ("[federation]\nnats = []", "federation.nats"),
        ("[federation]\nnats = [\"nats://a:4222\"]\nreplicas = 2", "federation.replicas"),
        ("[federation]\nnats = [\"nats://a:4222\"]\nmin_version_secs = -1", "federation.min_version_secs"),
        ("[federation]\nnats = [\"nats://a:4222\"]\nmin_version_secs = nan", "federation.min_version_secs"),
    ];
    for (toml, key) in cases {
        let err = load(toml).expect_err(toml);
        assert!(err.starts_with(&format!("{key}: ")), "{toml:?} should name {key}, got: {err}");
    }
}

#[test]
fn unknown_keys_and_wrong_types_name_the_key() {
    for (toml, key) in [
        ("[round]\ntarjet = 3", "tarjet"),
        ("colour = 1", "colour"),
        ("[inner]\nsteps = \"many\"", "steps"),
        ("[model]\nbias = 1", "bias"),
        ("[aggregation]\nrule = \"median\"", "median"),
        ("[data]\ntokenizer = \"sentencepiece\"", "sentencepiece"),
        ("[mesh]\nice_servers = [{ urls = [\"turn:t\"], password = \"p\" }]", "password"),
        ("[mesh]\nice_servers = [3]", "stun:/turn: URL, or a table"),
    ] {
        let err = load(toml).expect_err(toml);
        assert!(err.contains(key), "{toml:?} should mention {key}, got: {err}");
    }
}

#[test]
fn ice_servers_take_urls_and_tables_with_credentials() {
    let job = load(
        "[mesh]\nice_servers = [\"stun:s.example.org:3478\", \
         { urls = [\"turn:t.example.org:3478\"], username = \"u\", credential = \"p\" }]\n\
         turn_urls = [\"turns:t.example.org:5349\"]\nturn_secret = \"s\"\nrelay_only = true",
    )
    .expect("a valid [mesh]");
    let servers = crowdgrad_relay::ice::servers_for_session(&job.mesh, 7, std::time::SystemTime::UNIX_EPOCH);
    let urls: Vec<&str> = servers.iter().flat_map(|s| s.urls.iter().map(String::as_str)).collect();
    assert_eq!(urls, ["stun:s.example.org:3478", "turn:t.example.org:3478", "turns:t.example.org:5349"]);
    assert_eq!((servers[0].username.as_str(), servers[1].username.as_str()), ("", "u"));
    assert_eq!(servers[2].username, "86400:7", "a day after the epoch, session 7");
    assert!(job.mesh.relay_only);
}

#[test]
fn a_missing_file_is_an_error_that_names_it() {
    let err = JobConfig::load(Path::new("/no/such/job.toml")).expect_err("missing file").to_string();
    assert!(err.starts_with("/no/such/job.toml: cannot read"), "{err}");
}
