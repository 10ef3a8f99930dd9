//! Every table format round-trips: sink.table writes it, collect.table reads it back.

mod common;

use arrow::array::{Float64Array, Int64Array, StringArray};
use common::{pipe_output, read_parquet, text, write};

#[test]
fn every_format_round_trips_through_sink_and_collect() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "in/rows.csv", "name,score,weight\nann,1,0.5\nbob,2,1.5\ncid,3,2.5\n");
    for ext in ["parquet", "jsonl", "arrow", "csv"] {
        let write_pipeline = format!(
            "[pipeline]\nname = \"w\"\noutput_dir = \"stage1\"\n\n[[stage]]\nid = \"rows\"\nuses = \"collect.table\"\n\
             path = \"in/rows.csv\"\nid_column = \"name\"\n\n[[stage]]\nid = \"save\"\nuses = \"sink.table\"\npath = \"rows.{ext}\"\n"
        );
        write(dir.path(), "w.toml", &write_pipeline);
        let out = pipe_output(&["run", "w.toml", "--quiet"], dir.path());
        assert_eq!(out.status.code(), Some(0), "{ext}: {}", text(&out));

        let read_pipeline = format!(
            "[pipeline]\nname = \"r\"\noutput_dir = \"stage2\"\n\n[[stage]]\nid = \"rows\"\nuses = \"collect.table\"\n\
             path = \"stage1/rows.{ext}\"\nid_column = \"id\"\ncolumns = [\"score\", \"weight\"]\n\n\
             [[stage]]\nid = \"q\"\nuses = \"preprocess.sql\"\nquery = \"SELECT id, score * 10 AS s, weight FROM batch\"\n\n\
             [[stage]]\nid = \"save\"\nuses = \"sink.table\"\npath = \"back.parquet\"\n"
        );
        write(dir.path(), "r.toml", &read_pipeline);
        let out = pipe_output(&["run", "r.toml", "--quiet"], dir.path());
        assert_eq!(out.status.code(), Some(0), "{ext}: {}", text(&out));
        let back = read_parquet(&dir.path().join("stage2/back.parquet"));
        let ids = back.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let scores = back.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        let weights = back.column(2).as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!(ids.iter().flatten().collect::<Vec<_>>(), ["ann", "bob", "cid"], "{ext}");
        assert_eq!(scores.values().to_vec(), [10, 20, 30], "{ext}");
        assert_eq!(weights.values().to_vec(), [0.5, 1.5, 2.5], "{ext}");
    }
}

/// sink.table writes every extension collect.table reads (the one mapping of
/// `pipeline::formats`), each in its format, and collect.table reads them all back.
#[test]
fn sink_and_collect_take_the_same_extensions() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "in/rows.csv", "name,score,weight\nann,1,0.5\nbob,2,1.5\ncid,3,2.5\n");
    let mut write_pipeline = "[pipeline]\nname = \"w\"\noutput_dir = \"stage1\"\n\n[[stage]]\nid = \"rows\"\n\
                              uses = \"collect.table\"\npath = \"in/rows.csv\"\nid_column = \"name\"\n"
        .to_string();
    for (i, (ext, _)) in pipeline::formats::EXTENSIONS.iter().enumerate() {
        write_pipeline
            .push_str(&format!("\n[[stage]]\nid = \"save{i}\"\nuses = \"sink.table\"\npath = \"rows.{ext}\"\n"));
    }
    write(dir.path(), "w.toml", &write_pipeline);
    let out = pipe_output(&["run", "w.toml", "--quiet"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let pq = std::fs::read(dir.path().join("stage1/rows.pq")).unwrap();
    assert!(pq.starts_with(b"PAR1") && pq.ends_with(b"PAR1"), "rows.pq is not a Parquet file");
    assert!(std::fs::read(dir.path().join("stage1/rows.feather")).unwrap().starts_with(b"ARROW1"));

    let read_pipeline = "[pipeline]\nname = \"r\"\noutput_dir = \"stage2\"\n\n[[stage]]\nid = \"rows\"\n\
                         uses = \"collect.table\"\npath = \"stage1/rows.*\"\nid_column = \"id\"\n\
                         columns = [\"score\", \"weight\"]\n\n[[stage]]\nid = \"save\"\nuses = \"sink.table\"\n\
                         path = \"back.parquet\"\n";
    write(dir.path(), "r.toml", read_pipeline);
    let out = pipe_output(&["run", "r.toml", "--quiet"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let back = read_parquet(&dir.path().join("stage2/back.parquet"));
    let ids = back.column(0).as_any().downcast_ref::<StringArray>().unwrap();
    let files = pipeline::formats::EXTENSIONS.len();
    assert_eq!(ids.iter().flatten().collect::<Vec<_>>(), ["ann", "bob", "cid"].repeat(files));
    let scores = back.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
    assert_eq!(scores.values().to_vec(), [1, 2, 3].repeat(files));
}

/// Tensor columns written to Parquet and Arrow files keep their `arrow.fixed_shape_tensor` type
/// for pyarrow (which refuses the type over a list whose item is not nullable, and once read them
/// back as plain lists), and pipe reads them back as the same tensors.
#[test]
fn tensor_columns_stay_tensors_for_pyarrow_and_for_pipe() {
    let dir = tempfile::tempdir().unwrap();
    for ext in ["parquet", "arrow"] {
        let pipeline = format!(
            "[pipeline]\nname = \"t\"\n\n[[stage]]\nid = \"z\"\nuses = \"collect.latent\"\ncount = 3\nshape = [4, 2, 2]\n\
             into = \"sample\"\n\n[[stage]]\nid = \"save\"\nuses = \"sink.table\"\npath = \"rows.{ext}\"\n"
        );
        write(dir.path(), "w.toml", &pipeline);
        let out = pipe_output(&["run", "w.toml", "--quiet"], dir.path());
        assert_eq!(out.status.code(), Some(0), "{ext}: {}", text(&out));
        let python = common::repo().join(".pipe/venv/bin/python3");
        let check = format!(
            "import pyarrow as pa, pyarrow.parquet as pq, pyarrow.feather as pf\n\
             t = (pq.read_table if '{ext}' == 'parquet' else pf.read_table)('out/rows.{ext}')\n\
             c = t['sample']\nassert isinstance(c.type, pa.FixedShapeTensorType), c.type\n\
             print(c.type.shape, c.combine_chunks().to_numpy_ndarray().shape)"
        );
        let out = std::process::Command::new(&python).args(["-c", &check]).current_dir(dir.path()).output().unwrap();
        assert_eq!(text(&out).trim(), "[4, 2, 2] (3, 4, 2, 2)", "{ext}: {}", text(&out));
        let back = format!(
            "[pipeline]\nname = \"r\"\noutput_dir = \"back\"\n\n[[stage]]\nid = \"rows\"\nuses = \"collect.table\"\n\
             path = \"out/rows.{ext}\"\nid_column = \"id\"\n\n[[stage]]\nid = \"save\"\nuses = \"sink.table\"\n\
             path = \"rows.parquet\"\n"
        );
        write(dir.path(), "r.toml", &back);
        let out = pipe_output(&["validate", "r.toml"], dir.path());
        assert!(text(&out).contains("sample: FixedSizeList(16 x Float32)"), "{ext}: {}", text(&out));
        let out = pipe_output(&["run", "r.toml", "--quiet"], dir.path());
        assert_eq!(out.status.code(), Some(0), "{ext}: {}", text(&out));
        let batch = read_parquet(&dir.path().join("back/rows.parquet"));
        let field = batch.schema().field_with_name("sample").unwrap().clone();
        assert_eq!(pipeline::tensor::tensor_shape(&field), Some(vec![4, 2, 2]), "{ext}");
    }
}
