//! A 3x5 pixel font for grid captions: digits, letters (drawn as capitals) and common punctuation.
//! Anything else draws as '?'.

/// Glyph rows top to bottom, three bits each (the high bit is the left pixel).
fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_uppercase() {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [3, 4, 4, 4, 3],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'G' => [3, 4, 5, 5, 3],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'J' => [1, 1, 1, 5, 2],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [2, 5, 5, 5, 2],
        'P' => [6, 5, 6, 4, 4],
        'Q' => [2, 5, 5, 6, 3],
        'R' => [6, 5, 6, 5, 5],
        'S' => [3, 4, 2, 1, 6],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'W' => [5, 5, 7, 7, 5],
        'X' => [5, 5, 2, 5, 5],
        'Y' => [5, 5, 2, 2, 2],
        'Z' => [7, 1, 2, 4, 7],
        ' ' => [0, 0, 0, 0, 0],
        '.' => [0, 0, 0, 0, 2],
        ',' => [0, 0, 0, 2, 4],
        ':' => [0, 2, 0, 2, 0],
        '-' => [0, 0, 7, 0, 0],
        '_' => [0, 0, 0, 0, 7],
        '=' => [0, 7, 0, 7, 0],
        '+' => [0, 2, 7, 2, 0],
        '/' => [1, 1, 2, 4, 4],
        '%' => [5, 1, 2, 4, 5],
        '#' => [5, 7, 5, 7, 5],
        '(' => [2, 4, 4, 4, 2],
        ')' => [2, 1, 1, 1, 2],
        _ => [7, 1, 2, 0, 2],
    }
}

/// Width of one character cell (glyph and a one-pixel gap) at scale 1.
pub const ADVANCE: u32 = 4;
/// Height of the glyphs at scale 1.
pub const HEIGHT: u32 = 5;

/// Draws `text` in white into an RGB canvas `width` pixels wide, its top-left corner at (x, y),
/// each font pixel `scale` pixels square; characters past `max_width` are cut.
pub fn draw(canvas: &mut [u8], width: u32, x: u32, y: u32, scale: u32, max_width: u32, text: &str) {
    let height = canvas.len() as u32 / (width * 3);
    let fits = (max_width / (ADVANCE * scale)) as usize;
    for (i, c) in text.chars().take(fits).enumerate() {
        let left = x + i as u32 * ADVANCE * scale;
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..3u32 {
                if bits & (4 >> col) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (px, py) = (left + col * scale + dx, y + row as u32 * scale + dy);
                        if px < width && py < height {
                            let at = ((py * width + px) * 3) as usize;
                            canvas[at..at + 3].copy_from_slice(&[255, 255, 255]);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_inside_the_canvas_only() {
        let mut canvas = vec![0u8; 8 * 6 * 3];
        draw(&mut canvas, 8, 0, 0, 1, 8, "1?");
        // '1' is [2, 6, 2, 2, 7]: its top row lights the middle pixel only.
        assert_eq!(&canvas[0..9], &[0, 0, 0, 255, 255, 255, 0, 0, 0][..]);
        // The last glyph row of '1' is full.
        assert_eq!(canvas[(4 * 8) * 3], 255);
        // A one-character box cuts the second glyph.
        let mut small = vec![0u8; 8 * 6 * 3];
        draw(&mut small, 8, 0, 0, 1, 4, "11");
        assert!(small.chunks(3).skip(4).step_by(8).all(|p| p == [0, 0, 0]));
    }
}
