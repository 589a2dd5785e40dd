//! Image preprocessing against hand-checked sizes and values, and bit-exactly against Pillow
//! reference outputs (`fixtures/checkpoint/make_preprocess_refs.py`, Pillow 13.0.0).

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use image::{Rgb, RgbImage, Rgba, RgbaImage};
use vggt::preprocess::{
    load_and_preprocess_images, output_size, output_size_to, preprocess_batch_to, preprocess_rgb,
    preprocess_rgb_to, resize_bicubic_pil, resized_size, InputGeometry, PreprocessError,
    PreprocessMode, Preprocessed,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/checkpoint"
    ))
    .join(name)
}

/// The test pattern of `make_preprocess_refs.py` (channel 3 is alpha).
fn pattern_value(x: u32, y: u32, c: u32) -> u8 {
    if c == 3 {
        if (x / 9 + y / 7).is_multiple_of(5) {
            0
        } else {
            ((x * 3 + y * 5) % 256) as u8
        }
    } else {
        ((x * 3 + y * 2 + 40 * c + (x / 13 + y / 11) % 3 * 40) % 256) as u8
    }
}

fn pattern(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        Rgb([0, 1, 2].map(|c| pattern_value(x, y, c)))
    })
}

fn reference(name: &str) -> RgbImage {
    image::open(fixture(name)).expect("reference PNG").to_rgb8()
}

/// Largest difference in grey levels between a preprocessed image and a uint8 reference.
fn max_level_diff(batch: &Preprocessed, index: usize, want: &RgbImage) -> f32 {
    let [_, _, h, w] = batch.shape;
    assert_eq!((w as u32, h as u32), want.dimensions(), "size");
    let plane = h * w;
    let mut worst = 0.0f32;
    for c in 0..3 {
        for (i, p) in want.pixels().enumerate() {
            let got = batch.values[(index * 3 + c) * plane + i];
            worst = worst.max((got * 255.0 - f32::from(p.0[c])).abs());
        }
    }
    worst
}

#[test]
fn sizes_follow_upstream_examples() {
    use PreprocessMode::{Crop, Pad};
    // Spec examples (W x H).
    assert_eq!(output_size(1920, 1080, Crop), (518, 294));
    assert_eq!(output_size(640, 480, Crop), (518, 392));
    // Portrait: resized to 518 x 924 (920.9 / 14 = 65.8 -> 66 patches), then centre-cropped.
    assert_eq!(resized_size(1080, 1920, Crop), (518, 924));
    assert_eq!(output_size(1080, 1920, Crop), (518, 518));
    // Pad mode: the longer side is 518 whichever it is.
    assert_eq!(resized_size(1920, 1080, Pad), (518, 294));
    assert_eq!(resized_size(1080, 1920, Pad), (294, 518));
    assert_eq!(output_size(1080, 1920, Pad), (518, 518));
    // Exact halves round to even like Python's round(): 2.5 -> 2 patches, 1.5 -> 2, 3.5 -> 4.
    assert_eq!(resized_size(518, 35, Crop), (518, 28));
    assert_eq!(resized_size(1036, 70, Crop), (518, 28));
    assert_eq!(resized_size(518, 21, Crop), (518, 28));
    assert_eq!(resized_size(518, 49, Crop), (518, 56));
}

#[test]
fn uniform_images_keep_their_colour_and_pad_white() {
    let grey = RgbImage::from_pixel(1920, 1080, Rgb([10, 128, 250]));
    let crop = preprocess_rgb(std::slice::from_ref(&grey), PreprocessMode::Crop).expect("crop");
    assert_eq!(crop.shape, [1, 3, 294, 518]);
    let plane = 294 * 518;
    for (c, level) in [10.0f32, 128.0, 250.0].into_iter().enumerate() {
        assert!(
            crop.values[c * plane..(c + 1) * plane]
                .iter()
                .all(|&v| v == level / 255.0),
            "channel {c}"
        );
    }

    let pad = preprocess_rgb(&[grey], PreprocessMode::Pad).expect("pad");
    assert_eq!(pad.shape, [1, 3, 518, 518]);
    // 294 content rows: (518 - 294) / 2 = 112 white rows above and 112 below.
    let at = |c: usize, y: usize, x: usize| pad.values[(c * 518 + y) * 518 + x];
    for x in [0, 300, 517] {
        assert_eq!(at(0, 0, x), 1.0);
        assert_eq!(at(1, 111, x), 1.0);
        assert_eq!(at(0, 112, x), 10.0 / 255.0);
        assert_eq!(at(2, 405, x), 250.0 / 255.0);
        assert_eq!(at(1, 406, x), 1.0);
        assert_eq!(at(2, 517, x), 1.0);
    }
}

#[test]
fn bicubic_resize_matches_pillow_exactly() {
    for (w, h, ow, oh) in [(97, 61, 41, 26), (23, 17, 50, 31), (60, 20, 30, 40)] {
        let got = resize_bicubic_pil(&pattern(w, h), ow, oh);
        let want = reference(&format!("bicubic_{w}x{h}_to_{ow}x{oh}.png"));
        assert_eq!(got, want, "{w}x{h} -> {ow}x{oh} differs from Pillow");
    }
}

#[test]
fn pipeline_matches_pillow_reference() {
    for (name, w, h, mode) in [
        ("crop_700x500", 700, 500, PreprocessMode::Crop),
        ("crop_200x400", 200, 400, PreprocessMode::Crop),
        ("pad_300x500", 300, 500, PreprocessMode::Pad),
    ] {
        let batch = preprocess_rgb(&[pattern(w, h)], mode).expect("preprocess");
        let diff = max_level_diff(&batch, 0, &reference(&format!("pre_{name}_out.png")));
        assert_eq!(diff, 0.0, "{name}: max difference {diff} grey levels");
    }
}

#[test]
fn rgba_file_is_composited_on_white_like_pillow() {
    let input = fixture("pre_crop_rgba_120x80_in.png");
    // The file really is RGBA with transparent pixels.
    let decoded = image::open(&input).expect("open").to_rgba8();
    let expected_in = RgbaImage::from_fn(120, 80, |x, y| {
        Rgba([0, 1, 2, 3].map(|c| pattern_value(x, y, c)))
    });
    assert_eq!(decoded, expected_in);
    let batch = load_and_preprocess_images(&[&input], PreprocessMode::Crop).expect("load");
    assert_eq!(batch.shape, [1, 3, 350, 518]);
    let diff = max_level_diff(&batch, 0, &reference("pre_crop_rgba_120x80_out.png"));
    assert_eq!(diff, 0.0, "max difference {diff} grey levels");
}

#[test]
fn mixed_sizes_are_padded_to_the_largest() {
    let batch = preprocess_rgb(
        &[pattern(700, 500), pattern(200, 400)],
        PreprocessMode::Crop,
    )
    .expect("batch");
    assert_eq!(batch.shape, [2, 3, 518, 518]);
    // Image 0 is 518 x 364: (518 - 364) / 2 = 77 white rows on top, then the same pixels as alone.
    let alone = preprocess_rgb(&[pattern(700, 500)], PreprocessMode::Crop).expect("alone");
    let plane = 518 * 518;
    for c in 0..3 {
        let padded = &batch.values[c * plane..(c + 1) * plane];
        assert!(padded[..77 * 518].iter().all(|&v| v == 1.0));
        assert_eq!(
            &padded[77 * 518..(77 + 364) * 518],
            &alone.values[c * 364 * 518..(c + 1) * 364 * 518]
        );
        assert!(padded[(77 + 364) * 518..].iter().all(|&v| v == 1.0));
    }
    let tensor = batch.to_tensor::<Flex>(&Default::default());
    assert_eq!(tensor.dims(), [2, 3, 518, 518]);
}

#[test]
fn bad_inputs_are_errors() {
    assert!(matches!(
        preprocess_rgb(&[], PreprocessMode::Crop),
        Err(PreprocessError::NoImages)
    ));
    // 1000 x 5: 5 * 0.518 / 14 = 0.19 rounds to 0 rows.
    assert!(matches!(
        preprocess_rgb(
            &[pattern(20, 20), RgbImage::new(1000, 5)],
            PreprocessMode::Crop
        ),
        Err(PreprocessError::TooThin {
            index: 1,
            width_px: 1000,
            height_px: 5
        })
    ));
    let missing = fixture("no_such_image.png");
    match load_and_preprocess_images(&[&missing], PreprocessMode::Crop) {
        Err(PreprocessError::Load { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected Load error, got {other:?}"),
    }
}

#[test]
fn target_518_is_the_upstream_recipe() {
    let images = [pattern(640, 480), pattern(300, 500)];
    for mode in [PreprocessMode::Crop, PreprocessMode::Pad] {
        let upstream = preprocess_rgb(&images, mode).expect("preprocess");
        let general = preprocess_rgb_to(&images, mode, 518).expect("preprocess");
        assert_eq!(general, upstream, "{mode:?}");
        let batch = preprocess_batch_to(&images, mode, 518).expect("batch");
        assert_eq!(Preprocessed::from_images(&batch), upstream, "{mode:?}");
    }
}

#[test]
fn smaller_targets_follow_the_same_rounding_and_crop() {
    // 640x480 at 280: height round(480 * 280 / 640 / 14) * 14 = round(15) * 14 = 210.
    assert_eq!(
        output_size_to(640, 480, PreprocessMode::Crop, 280),
        (280, 210)
    );
    // Portrait 480x640 at 280: resized to 280 x round(26.67) * 14 = 378, cropped to 280.
    let geometry = InputGeometry::new(480, 640, PreprocessMode::Crop, 280);
    assert_eq!(geometry.resized_px, (280, 378));
    assert_eq!(geometry.output_px, (280, 280));
    assert_eq!(geometry.offset_px, (0.0, -49.0));
    let batch = preprocess_rgb_to(&[pattern(480, 640)], PreprocessMode::Crop, 280).expect("ok");
    assert_eq!(batch.shape, [1, 3, 280, 280]);
    // The cropped batch is the middle rows of the uncropped resize.
    let resized = resize_bicubic_pil(&pattern(480, 640), 280, 378);
    for (y, x) in [(0u32, 0u32), (100, 37), (279, 279)] {
        let want = f32::from(resized.get_pixel(x, y + 49).0[1]) / 255.0;
        let got = batch.values[(280 * 280) + (y * 280 + x) as usize];
        assert_eq!(got, want, "({x}, {y})");
    }
    // Pad mode centres the resized image: 640x480 at 280 is 280 x 210, top (280 - 210) / 2 = 35.
    let padded = InputGeometry::new(640, 480, PreprocessMode::Pad, 280);
    assert_eq!(padded.offset_px, (0.0, 35.0));
}

#[test]
fn geometry_maps_source_pixels_to_where_they_land() {
    // A black square on white in a tall image: after crop-mode preprocessing its centre is where
    // the geometry says.
    let (w, h) = (300u32, 500u32);
    let (cu, cv) = (120.0, 310.0);
    let source = RgbImage::from_fn(w, h, |x, y| {
        let inside =
            (f64::from(x) + 0.5 - cu).abs() < 20.0 && (f64::from(y) + 0.5 - cv).abs() < 20.0;
        if inside {
            Rgb([0, 0, 0])
        } else {
            Rgb([255, 255, 255])
        }
    });
    let geometry = InputGeometry::new(w, h, PreprocessMode::Crop, 518);
    assert!(geometry.offset_px.1 < 0.0, "tall images are cropped");
    let out = preprocess_rgb_to(&[source], PreprocessMode::Crop, 518).expect("ok");
    let [_, _, oh, ow] = out.shape;
    assert_eq!((ow as u32, oh as u32), geometry.output_px);
    let (mut sum_u, mut sum_v, mut mass) = (0.0, 0.0, 0.0);
    for y in 0..oh {
        for x in 0..ow {
            let darkness = 1.0 - f64::from(out.values[y * ow + x]);
            sum_u += darkness * (x as f64 + 0.5);
            sum_v += darkness * (y as f64 + 0.5);
            mass += darkness;
        }
    }
    let (want_u, want_v) = geometry.source_to_output(cu, cv);
    assert!(
        (sum_u / mass - want_u).abs() < 0.5,
        "{} vs {want_u}",
        sum_u / mass
    );
    assert!(
        (sum_v / mass - want_v).abs() < 0.5,
        "{} vs {want_v}",
        sum_v / mass
    );
    let (back_u, back_v) = geometry.output_to_source(want_u, want_v);
    assert!((back_u - cu).abs() < 1e-9 && (back_v - cv).abs() < 1e-9);
}
