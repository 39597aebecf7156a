package app

import (
	"context"
	"fmt"
	"sync"
)

// runnable is a long-running part of the driver. All are started and
// stopped the same way: run works until ctx is done and then returns nil;
// an error stops the whole driver.
type runnable struct {
	name string
	run  func(ctx context.Context) error
}

// runAll runs every part until ctx is done or one fails, then cancels the
// others, waits for all of them and returns the first failure (nil after a
// plain stop), named after its part.
func runAll(ctx context.Context, parts []runnable) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for _, p := range parts {
		wg.Go(func() {
			if err := p.run(ctx); err != nil && ctx.Err() == nil {
				once.Do(func() { first = fmt.Errorf("%s: %w", p.name, err) })
				cancel()
			}
		})
	}
	<-ctx.Done()
	wg.Wait()
	return first
}
