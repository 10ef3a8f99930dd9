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
