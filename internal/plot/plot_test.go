package plot

import (
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"testing"
)

func TestTextWidthAndGlyphs(t *testing.T) {
	for r, g := range glyphs {
		for _, row := range g {
			if len(row) != 5 {
				t.Errorf("glyph %q has a row of %d columns, want 5", r, len(row))
			}
		}
	}
	if got := TextWidth("N=10", 2); got != 4*glyphW*2 {
		t.Errorf("TextWidth = %d, want %d", got, 4*glyphW*2)
	}
}

// TestTextAndLines checks that the primitives paint where they say and
// nowhere else, and that SavePNG round-trips the picture.
func TestTextAndLines(t *testing.T) {
	img := image.NewRGBA(image.Rect(0, 0, 40, 20))
	red := color.RGBA{R: 255, A: 255}
	Text(img, 0, 0, "I", red, 1)
	// 'I' has its top bar in columns 1..3 of row 0, nothing in column 0.
	if img.RGBAAt(1, 0) != red || img.RGBAAt(0, 0) == red {
		t.Errorf("Text painted the wrong pixels of 'I'")
	}
	HLine(img, 10, 20, 15, red)
	VLine(img, 30, 5, 10, red)
	for _, p := range []image.Point{{10, 15}, {19, 15}, {30, 5}, {30, 9}} {
		if img.RGBAAt(p.X, p.Y) != red {
			t.Errorf("pixel %v not painted", p)
		}
	}
	for _, p := range []image.Point{{20, 15}, {10, 16}, {30, 10}, {31, 5}} {
		if img.RGBAAt(p.X, p.Y) == red {
			t.Errorf("pixel %v painted, want untouched", p)
		}
	}
	path := filepath.Join(t.TempDir(), "sub", "x.png")
	if err := SavePNG(path, img); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	back, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	if r, _, _, _ := back.At(30, 7).RGBA(); r>>8 != 255 {
		t.Errorf("saved PNG lost the line at (30,7)")
	}
}
