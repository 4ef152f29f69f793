/**
 * The block server on its own: `node dist/server/main.js --listen HOST:PORT
 * --device NAME=PATH ...`, the same options as `bslfs serve`.
 */
import { Command, CommanderError } from 'commander'
import { FsError, UsageError } from '../errors'
import { configureServeCommand } from './command'

export async function main (argv = process.argv): Promise<void> {
  const program = configureServeCommand(new Command('bslfs-serve'))
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride()
  try {
    await program.parseAsync(argv)
  } catch (err) {
    if (err instanceof CommanderError) process.exit(err.exitCode === 0 ? 0 : 2)
    const msg = err instanceof UsageError || err instanceof FsError ? err.message : (err as Error)?.message ?? String(err)
    console.error(`bslfs serve: ${msg}`)
    if (process.env.DEBUG && err instanceof Error) console.error(err.stack)
    process.exit(1)
  }
}

if (require.main === module) void main()
