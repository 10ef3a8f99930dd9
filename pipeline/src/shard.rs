//! Sharded runs: `pipe run FILE --shard I/N` processes the source rows whose stable hash of `id`
//! falls in shard `I` of `N`, so `N` processes (the tasks of a Slurm job array, the pods of a
//! Kubernetes Indexed Job) together process every row exactly once, whatever `N`.
//!
//! The hash is FNV-1a 64 over the id's UTF-8 bytes, finished with MurmurHash3's 64-bit mixer
//! (FNV-1a alone carries little entropy in its low bits), and the shard is that hash modulo `N`:
//! a fixed function of the id alone, the same on every machine, build and release, so a tool in
//! any language can tell which shard holds a row. Each shard writes its own run report, rejects
//! and journal under names carrying `IIIII-of-NNNNN` ([`RunFiles`]), so shards can run at once
//! into one output folder, and a retried shard resumes its own journal.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::plugin::{BuildContext, Shard};

/// The Kubernetes Indexed Job's index variable.
pub const K8S_INDEX: &str = "JOB_COMPLETION_INDEX";

/// The variable that gives the shard count with `--shard auto` where the scheduler does not (a
/// Kubernetes Indexed Job: set it to the Job's `completions`).
pub const COUNT_VAR: &str = "PIPE_SHARD_COUNT";

/// What `--shard` was given: a fixed shard, or `auto` (with a count, for `auto/N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardArg {
    /// `I/N`.
    Fixed(Shard),
    /// `auto` or `auto/N`: the index (and count) from the scheduler's environment.
    Auto(Option<u32>),
}

impl std::str::FromStr for ShardArg {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let usage = "give I/N (shard I of N, from 0), auto, or auto/N";
        let (left, right) = match text.split_once('/') {
            Some((l, r)) => (l.trim(), Some(r.trim())),
            None => (text.trim(), None),
        };
        let count = |r: &str| -> std::result::Result<u32, String> {
            match r.parse::<u32>() {
                Ok(0) => Err(format!("\"{text}\": the shard count must be at least 1")),
                Ok(n) => Ok(n),
                Err(_) => Err(format!("\"{text}\": \"{r}\" is not a shard count; {usage}")),
            }
        };
        if left == "auto" {
            return Ok(ShardArg::Auto(right.map(count).transpose()?));
        }
        let Some(right) = right else { return Err(format!("\"{text}\": {usage}")) };
        let index = left.parse::<u32>().map_err(|_| format!("\"{text}\": \"{left}\" is not a shard index; {usage}"))?;
        Shard::checked(index, count(right)?).map(ShardArg::Fixed).map_err(|e| format!("\"{text}\": {e}"))
    }
}

impl ShardArg {
    /// The shard this process runs: the fixed one, or under `auto` the one the environment
    /// names (read through `var`): a Slurm job array (`SLURM_ARRAY_TASK_ID` with
    /// `SLURM_ARRAY_TASK_COUNT`, or `SLURM_ARRAY_TASK_MIN`/`MAX` and `STEP`), else a Kubernetes
    /// Indexed Job (`JOB_COMPLETION_INDEX`, with the count from `auto/N` or `PIPE_SHARD_COUNT`).
    pub fn resolve(self, var: impl Fn(&str) -> Option<String>) -> std::result::Result<Shard, String> {
        let given = match self {
            ShardArg::Fixed(shard) => return Ok(shard),
            ShardArg::Auto(given) => given,
        };
        let number = |name: &str| -> std::result::Result<Option<i64>, String> {
            match var(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => v.parse::<i64>().map(Some).map_err(|_| format!("{name}={v} is not a whole number")),
            }
        };
        if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
            let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let step = number("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
            let count = match (number("SLURM_ARRAY_TASK_COUNT")?, number("SLURM_ARRAY_TASK_MAX")?) {
                (Some(n), _) => n,
                (None, Some(max)) => (max - min) / step + 1,
                (None, None) => {
                    return Err("--shard auto: SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_COUNT nor \
                                SLURM_ARRAY_TASK_MAX is"
                        .into());
                }
            };
            if (id - min) % step != 0 {
                return Err(format!("--shard auto: array task {id} is not on the array's step {step} from {min}"));
            }
            let index = (id - min) / step;
            return checked_auto(index, count, given, "the Slurm job array");
        }
        if let Some(index) = number(K8S_INDEX)? {
            let count = match (given, number(COUNT_VAR)?) {
                (Some(n), Some(m)) if i64::from(n) != m => {
                    return Err(format!("--shard auto/{n} disagrees with {COUNT_VAR}={m}"));
                }
                (Some(n), _) => i64::from(n),
                (None, Some(m)) => m,
                (None, None) => {
                    return Err(format!(
                        "--shard auto: {K8S_INDEX} gives the index but not the count: give --shard auto/N \
                         (N = the Job's completions) or set {COUNT_VAR}"
                    ));
                }
            };
            return checked_auto(index, count, None, "the Kubernetes Indexed Job");
        }
        Err(format!(
            "--shard auto: no shard in the environment (SLURM_ARRAY_TASK_ID of a Slurm job array, or {K8S_INDEX} \
             of a Kubernetes Indexed Job); outside a scheduler give --shard I/N"
        ))
    }
}

fn checked_auto(index: i64, count: i64, given: Option<u32>, from: &str) -> std::result::Result<Shard, String> {
    if let Some(n) = given.filter(|&n| i64::from(n) != count) {
        return Err(format!("--shard auto/{n}: {from} has {count} tasks"));
    }
    let (Ok(index), Ok(count)) = (u32::try_from(index), u32::try_from(count)) else {
        return Err(format!("--shard auto: {from} gives shard {index} of {count}"));
    };
    Shard::checked(index, count).map_err(|e| format!("--shard auto ({from}): {e}"))
}

impl Shard {
    /// Shard `index` of `count`, checked (`count` at least 1, `index` below it).
    pub fn checked(index: u32, count: u32) -> std::result::Result<Shard, String> {
        match (index, count) {
            (_, 0) => Err("the shard count must be at least 1".into()),
            (i, n) if i >= n => Err(format!("shard {i} does not exist in {n} shards (they are 0 to {})", n - 1)),
            (index, count) => Ok(Shard { index, count }),
        }
    }

    /// The shard of `count` that the row `id` belongs to.
    pub fn of(id: &str, count: u32) -> u32 {
        (id_hash(id.as_bytes()) % u64::from(count.max(1))) as u32
    }

    /// Whether the row `id` belongs to this shard.
    pub fn keeps(&self, id: &str) -> bool {
        Shard::of(id, self.count) == self.index
    }

    /// `IIIII-of-NNNNN`, as in this shard's file names.
    pub fn suffix(&self) -> String {
        format!("{:05}-of-{:05}", self.index, self.count)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The stable hash a row's shard is taken from: FNV-1a 64, then MurmurHash3's fmix64.
pub fn id_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The files a run keeps beside its outputs: run.json, rejects.jsonl and the journal folder, or,
/// for a shard, `run-IIIII-of-NNNNN.json`, `rejects-IIIII-of-NNNNN.jsonl` and
/// `.pipe-journal-IIIII-of-NNNNN`.
#[derive(Debug, Clone)]
pub struct RunFiles {
    /// The run report.
    pub report: PathBuf,
    /// The rejects log.
    pub rejects: PathBuf,
    /// The journal folder.
    pub journal: PathBuf,
}

impl RunFiles {
    /// The run files in `output_dir` of the run of `shard` (none: an unsharded run).
    pub fn new(output_dir: &Path, shard: Option<Shard>) -> RunFiles {
        let tail = shard.map(|s| format!("-{}", s.suffix())).unwrap_or_default();
        RunFiles {
            report: output_dir.join(format!("run{tail}.json")),
            rejects: output_dir.join(format!("rejects{tail}.jsonl")),
            journal: output_dir.join(format!("{}{tail}", crate::journal::DIR)),
        }
    }
}

/// Refuses to build a stage that needs every row (a group's best, a grid, a report, a training)
/// under `--shard`, where it would see one shard's rows only. `instead` says what to do.
pub fn refuse_under_shard(cx: &BuildContext, plugin: &str, instead: &str) -> Result<()> {
    match cx.shard {
        None => Ok(()),
        Some(shard) => Err(Error::config(
            "uses",
            format!("{plugin} needs every row, and this run is shard {shard}: it would see that shard's rows only"),
        )
        .with_hint(instead.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    fn fixed(i: u32, n: u32) -> Shard {
        Shard { index: i, count: n }
    }

    #[test]
    fn flags_parse_and_bad_values_say_why() {
        assert_eq!("3/16".parse::<ShardArg>(), Ok(ShardArg::Fixed(fixed(3, 16))));
        assert_eq!("auto".parse::<ShardArg>(), Ok(ShardArg::Auto(None)));
        assert_eq!("auto/8".parse::<ShardArg>(), Ok(ShardArg::Auto(Some(8))));
        assert!("4/4".parse::<ShardArg>().unwrap_err().contains("shard 4 does not exist in 4 shards"));
        assert!("0/0".parse::<ShardArg>().unwrap_err().contains("at least 1"));
        assert!("3".parse::<ShardArg>().unwrap_err().contains("give I/N"));
        assert!("a/3".parse::<ShardArg>().unwrap_err().contains("not a shard index"));
        assert!("auto/x".parse::<ShardArg>().unwrap_err().contains("not a shard count"));
    }

    #[test]
    fn auto_reads_slurm_arrays_and_kubernetes_indexed_jobs() {
        let auto = ShardArg::Auto(None);
        let slurm = env(&[("SLURM_ARRAY_TASK_ID", "2"), ("SLURM_ARRAY_TASK_COUNT", "4")]);
        assert_eq!(auto.resolve(slurm), Ok(fixed(2, 4)));
        // --array=1-4: indexes from the array's minimum.
        let one_based =
            env(&[("SLURM_ARRAY_TASK_ID", "4"), ("SLURM_ARRAY_TASK_MIN", "1"), ("SLURM_ARRAY_TASK_MAX", "4")]);
        assert_eq!(auto.resolve(one_based), Ok(fixed(3, 4)));
        // --array=0-10:5 is tasks 0, 5, 10.
        let stepped = env(&[
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_MAX", "10"),
            ("SLURM_ARRAY_TASK_STEP", "5"),
        ]);
        assert_eq!(auto.resolve(stepped), Ok(fixed(1, 3)));
        let k8s = env(&[(K8S_INDEX, "5"), (COUNT_VAR, "8")]);
        assert_eq!(auto.resolve(k8s), Ok(fixed(5, 8)));
        assert_eq!(ShardArg::Auto(Some(8)).resolve(env(&[(K8S_INDEX, "7")])), Ok(fixed(7, 8)));

        assert!(auto.resolve(env(&[])).unwrap_err().contains("no shard in the environment"));
        assert!(auto.resolve(env(&[(K8S_INDEX, "1")])).unwrap_err().contains("--shard auto/N"));
        assert!(ShardArg::Auto(Some(4)).resolve(env(&[(K8S_INDEX, "4")])).unwrap_err().contains("does not exist"));
        let other = env(&[("SLURM_ARRAY_TASK_ID", "0"), ("SLURM_ARRAY_TASK_COUNT", "4")]);
        assert!(ShardArg::Auto(Some(8)).resolve(other).unwrap_err().contains("has 4 tasks"));
        let bad = env(&[("SLURM_ARRAY_TASK_ID", "x")]);
        assert!(auto.resolve(bad).unwrap_err().contains("not a whole number"));
    }

    #[test]
    fn every_id_is_in_exactly_one_shard_and_shards_are_even() {
        let ids: Vec<String> = (0..10_000).map(|i| format!("{}-{}", i % 10, i / 10)).collect();
        for n in [1, 2, 4, 7] {
            let mut sizes = vec![0usize; n as usize];
            for id in &ids {
                let owners: Vec<u32> = (0..n).filter(|&i| fixed(i, n).keeps(id)).collect();
                assert_eq!(owners.len(), 1, "{id} in shards {owners:?} of {n}");
                sizes[owners[0] as usize] += 1;
            }
            let mean = ids.len() / n as usize;
            assert!(sizes.iter().all(|&s| s.abs_diff(mean) < mean / 10), "{n} shards: {sizes:?}");
        }
    }

    #[test]
    fn the_hash_is_fixed() {
        // The documented function (checked against a Python re-derivation): a change here moves
        // rows between the shards of existing runs.
        assert_eq!(id_hash(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(id_hash(b"a"), 0x82a2_a958_a9be_ce5b);
        assert_eq!(id_hash(b"0-0"), 0x658e_2f86_d6c3_d812);
        assert_eq!(Shard::of("7-3", 16), 12);
    }

    #[test]
    fn shard_files_carry_the_shard() {
        let files = RunFiles::new(Path::new("out"), Some(fixed(3, 16)));
        assert_eq!(files.report, Path::new("out/run-00003-of-00016.json"));
        assert_eq!(files.rejects, Path::new("out/rejects-00003-of-00016.jsonl"));
        assert_eq!(files.journal, Path::new("out/.pipe-journal-00003-of-00016"));
        assert_eq!(RunFiles::new(Path::new("out"), None).report, Path::new("out/run.json"));
    }
}
