package plot

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"os"
	"path/filepath"
)

// FillRect paints the rectangle [x0,x1)×[y0,y1) with c.
func FillRect(img *image.RGBA, x0, y0, x1, y1 int, c color.Color) {
	draw.Draw(img, image.Rect(x0, y0, x1, y1), &image.Uniform{c}, image.Point{}, draw.Src)
}

// HLine draws a one-pixel horizontal line at row y from x0 to x1.
func HLine(img *image.RGBA, x0, x1, y int, c color.Color) { FillRect(img, x0, y, x1, y+1, c) }

// VLine draws a one-pixel vertical line at column x from y0 to y1.
func VLine(img *image.RGBA, x, y0, y1 int, c color.Color) { FillRect(img, x, y0, x+1, y1, c) }

// SavePNG writes img as a PNG at path, creating its directory.
func SavePNG(path string, img image.Image) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return fmt.Errorf("encode %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", path, err)
	}
	return nil
}
