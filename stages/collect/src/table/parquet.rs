//! Parquet: read row group by row group, each on its own reader, so a corrupt row group costs its
//! own unread rows and the next one is read. The footer gives each row group's row count, so the
//! rows not read are counted exactly; decoding runs inside [`pipeline::panics::catch`], since the
//! parquet crate can panic on corrupt pages. Rows are numbered by their position in the file (from
//! 0), so the rows after a lost group keep their numbers.

use std::fs::File;
use std::path::Path;

use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::file::metadata::RowGroupMetaData;
use pipeline::panics::catch;
use pipeline::{Error, Result};

use super::read::{FileContext, Format, decoder_failed};

/// The schema of a Parquet file, from its footer.
pub(crate) fn schema(path: &Path, name: &str) -> Result<arrow::datatypes::Schema> {
    let bad = |message: String| Error::config("path", format!("{name}: {message}"));
    let file = File::open(path).map_err(|e| bad(e.to_string()))?;
    if file.metadata().map_err(|e| bad(e.to_string()))?.len() == 0 {
        return Err(bad("the file is empty (0 bytes), so it is not a Parquet file".to_string()));
    }
    let meta = footer(&file).map_err(|e| bad(format!("cannot read the Parquet footer: {e}")))?;
    Ok(meta.schema().as_ref().clone())
}

/// The footer, read again without the Arrow schema stored in it when that part is what is corrupt
/// (the Parquet schema then gives the types, which are cast to the first file's).
fn footer(file: &File) -> std::result::Result<ArrowReaderMetadata, String> {
    let load = |options: ArrowReaderOptions| match catch(|| ArrowReaderMetadata::load(file, options)) {
        Ok(Ok(meta)) => Ok(meta),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(decoder_failed(Format::Parquet, &panic)),
    };
    load(ArrowReaderOptions::new())
        .or_else(|e| load(ArrowReaderOptions::new().with_skip_arrow_metadata(true)).map_err(|_| e))
}

/// Reads a Parquet file; returns its rows (read or rejected), as its footer counts them.
pub(crate) fn read(path: &Path, cx: &mut FileContext) -> Result<u64> {
    let opened = File::open(path).and_then(|f| Ok((f.metadata()?.len(), f)));
    let (len, file) = match opened {
        Ok(x) => x,
        Err(e) => return cx.reject(cx.name, 1, format!("cannot open the file: {e}")).map(|_| 0),
    };
    if len == 0 {
        let reason = "the file is empty (0 bytes), so it is not a Parquet file and its row count is unknown";
        return cx.reject(cx.name, 1, reason).map(|_| 0);
    }
    let meta = match footer(&file) {
        Ok(meta) => meta,
        Err(e) => {
            let reason = format!("cannot read the Parquet footer, so its row count is unknown: {e}");
            return cx.reject(cx.name, 1, reason).map(|_| 0);
        }
    };
    let groups = meta.metadata().num_row_groups();
    let mut first = 0u64;
    for group in 0..groups {
        let (rows, counts_disagree) = group_rows(meta.metadata().row_group(group));
        let (read, fault) = match read_group(&file, len, &meta, group, first, cx)? {
            Ok(read) if read >= rows => (read, None),
            Ok(read) => {
                (read, Some(counts_disagree.unwrap_or_else(|| format!("it ended after {read} of its {rows} rows"))))
            }
            Err((read, cause)) => (read, Some(cause)),
        };
        // A fault after the group's last row costs nothing.
        if let Some(cause) = fault.filter(|_| rows > read) {
            let lost = rows - read;
            let (from, to) = (first + read, first + rows - 1);
            let reason = format!(
                "row group {} of {groups} is corrupt, {lost} rows not read (rows {from}-{to} of the file): {cause}",
                group + 1
            );
            cx.reject(cx.name, lost, reason)?;
        }
        first += rows.max(read);
    }
    // Row groups missing from a corrupt footer still leave the file's own count behind.
    let said = meta.metadata().file_metadata().num_rows().max(0) as u64;
    if said > first {
        let lost = said - first;
        let reason = format!(
            "its footer says the file has {said} rows, its {groups} row groups hold {first}: {lost} rows not read"
        );
        cx.reject(cx.name, lost, reason)?;
        first = said;
    }
    Ok(first)
}

/// A row group's row count: its footer's `num_rows`, unless a column of flat rows counts more
/// values, as when that count is corrupt (the reader would stop at `num_rows` without a word); then
/// also what disagrees.
fn group_rows(group: &RowGroupMetaData) -> (u64, Option<String>) {
    let rows = group.num_rows().max(0) as u64;
    let most = group
        .columns()
        .iter()
        .filter(|c| c.column_descr().max_rep_level() == 0)
        .max_by_key(|c| c.num_values())
        .filter(|c| c.num_values().max(0) as u64 > rows);
    match most {
        Some(c) => {
            let values = c.num_values() as u64;
            let why =
                format!("its footer says {rows} rows but column `{}` has {values} values", c.column_path().string());
            (values, Some(why))
        }
        None => (rows, None),
    }
}

/// Reads one row group, whose first row is the file's row `first`; returns the rows read, or the
/// rows read before a fault and the fault.
fn read_group(
    file: &File,
    len: u64,
    meta: &ArrowReaderMetadata,
    group: usize,
    first: u64,
    cx: &mut FileContext,
) -> Result<std::result::Result<u64, (u64, String)>> {
    // A column chunk past the end of the file (a truncated file, a corrupt footer) is not read: its
    // length would be allocated before the read finds out.
    for column in meta.metadata().row_group(group).columns() {
        // As `byte_range()` computes it, which panics on a negative offset or size.
        let start = column.dictionary_page_offset().unwrap_or_else(|| column.data_page_offset());
        let (start, size) = (u64::try_from(start).ok(), u64::try_from(column.compressed_size()).ok());
        let end = start.zip(size).and_then(|(start, size)| start.checked_add(size));
        if end.is_none_or(|end| end > len) {
            let name = column.column_path().string();
            let why = format!("its column `{name}` lies past the end of the file ({len} bytes): truncated or corrupt");
            return Ok(Err((0, why)));
        }
    }
    let built = catch(|| {
        let input = file.try_clone()?;
        ParquetRecordBatchReaderBuilder::new_with_metadata(input, meta.clone())
            .with_row_groups(vec![group])
            .with_batch_size(cx.batch_size)
            .build()
    });
    let mut reader = match built {
        Ok(Ok(reader)) => reader,
        Ok(Err(e)) => return Ok(Err((0, e.to_string()))),
        Err(panic) => return Ok(Err((0, decoder_failed(Format::Parquet, &panic)))),
    };
    let mut read = 0u64;
    loop {
        match catch(|| reader.next()) {
            Ok(None) => return Ok(Ok(read)),
            Ok(Some(Ok(batch))) => {
                cx.convert_and_emit(&batch, first + read)?;
                read += batch.num_rows() as u64;
            }
            Ok(Some(Err(e))) => return Ok(Err((read, e.to_string()))),
            Err(panic) => return Ok(Err((read, decoder_failed(Format::Parquet, &panic)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    use super::super::read::testing::{cut, read_as_good, read_changing, shape_of};
    use super::*;

    /// 3,000 rows in 6 row groups of 500, and the same file with bytes overwritten in the first
    /// data page of row group 3's `name` column, where the decoder panics in debug builds.
    fn good_and_corrupt() -> (Vec<u8>, Vec<u8>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("score", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values((0..3000).map(|i| format!("row {i}")))) as ArrayRef,
                Arc::new(Int64Array::from_iter_values(0..3000)),
            ],
        )
        .unwrap();
        let props = parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_row_count(Some(500))
            .set_data_page_row_count_limit(100)
            .set_write_batch_size(100)
            .build();
        let mut good = Vec::new();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut good, schema, Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("good.parquet"), &good).unwrap();
        let reader = SerializedFileReader::new(File::open(dir.path().join("good.parquet")).unwrap()).unwrap();
        let pages = reader.get_row_group(2).unwrap().get_column_page_reader(0).unwrap();
        let data = pages.map(|p| p.unwrap()).find(|p| p.page_type() == parquet::basic::PageType::DATA_PAGE).unwrap();
        let (start, len) = reader.metadata().row_group(2).column(0).byte_range();
        let chunk = &good[start as usize..(start + len) as usize];
        let at = start as usize + chunk.windows(16).position(|w| w == &data.buffer()[..16]).unwrap();
        let mut bad = good.clone();
        // After the bit width, the first run's header is a varint: 0xff bytes never end it.
        bad[at + 1..at + 17].fill(0xff);
        (good, bad)
    }

    #[test]
    fn a_corrupt_row_group_costs_its_rows_and_the_next_groups_are_read() {
        let (good, bad) = good_and_corrupt();
        let dir = tempfile::tempdir().unwrap();
        let got = read_as_good(dir.path(), Format::Parquet, &good, &bad, 64).unwrap();
        assert_eq!(got.rejects.len(), 1, "{:?}", got.rejects);
        let (id, rows, reason) = &got.rejects[0];
        assert_eq!((id.as_str(), *rows), ("t.parquet", 500));
        assert!(
            reason.starts_with("row group 3 of 6 is corrupt, 500 rows not read (rows 1000-1499 of the file)"),
            "{reason}"
        );
        if cfg!(debug_assertions) {
            assert!(reason.contains("the Parquet decoder failed on corrupt data (attempt to shift"), "{reason}");
        }
        assert!(!reason.contains("panicked"));
        let ids = got.ids();
        assert_eq!((got.emitted(), got.rows, ids[1000].as_str()), (2500, 3000, "1500"));
    }

    #[test]
    fn a_file_cut_short_after_its_footer_was_read_costs_the_groups_past_the_cut() {
        let (good, _) = good_and_corrupt();
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t.parquet");
        std::fs::write(&t, &good).unwrap();
        let shape = shape_of(&schema(&t, "t").unwrap());
        // The footer is read when the file is opened; the file loses its second half after that.
        let got = read_changing(Format::Parquet, &t, &shape, 64, |n| {
            if n == 1 {
                cut(&t, good.len() as u64 / 2)
            }
        });
        assert_eq!(got.rows, 3000);
        assert_eq!(got.emitted() + got.rejected(), 3000, "{:?}", got.rejects);
        assert!(got.rejected() >= 1500, "{:?}", got.rejects);
    }
}
